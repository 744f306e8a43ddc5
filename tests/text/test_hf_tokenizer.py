"""HF folder tokenizer: tokenizers saved with Transformers' save_pretrained, compared with Transformers
loading the same folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamarun.errors import CheckpointError, ModelNotFoundError
from llamarun.text.byte_level import LLAMA3_PATTERN
from llamarun.text.hf_tokenizer import HFTokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello world, this is a test.",
    "日本語のテキストです。東京。",
    "สวัสดีครับ ภาษาไทย",
    "नमस्ते दुनिया",
    "emoji 😀👍🏽 ok",
    "def f(x):\n\treturn x * 2  \r\n\n",
    "  two leading, trailing  ",
    "digits 1234567 and 3.14",
    "",
]
CORPUS = [
    "Hello world, this is a test of the tokenizer with some words.",
    "日本語のテキストです。東京は晴れ。",
    "สวัสดีครับ ภาษาไทย",
    "नमस्ते दुनिया, हिंदी",
    "def f(x):\n    return x * 2\n",
    "digits 1234567890",
] * 20


@pytest.fixture(scope="module")
def byte_level_folder(tmp_path_factory) -> Path:
    """A Llama-3-shaped tokenizer: byte-level BPE, Llama 3 split regex, bos added by the post-processor."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|begin_of_text|>", "<|eot_id|>", "<|reserved|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )
    folder = tmp_path_factory.mktemp("byte_level")
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def spiece_folder(tmp_path_factory) -> Path:
    """A Llama-2-shaped tokenizer: SentencePiece BPE with byte fallback, built by Transformers."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in [
        "▁",
        "h",
        "e",
        "l",
        "o",
        "w",
        "r",
        "d",
        "ll",
        "llo",
        "▁h",
        "▁he",
        "▁hello",
        "▁w",
        "or",
        "▁wor",
        "ld",
        "▁world",
    ]:
        vocab[piece] = len(vocab)
    merges = [
        tuple(m.split())
        for m in ["l l", "ll o", "▁ h", "▁h e", "▁he llo", "▁ w", "o r", "▁w or", "l d", "▁wor ld"]
    ]
    tok = transformers.LlamaTokenizer(vocab=vocab, merges=merges)
    folder = tmp_path_factory.mktemp("spiece")
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_matches_transformers(byte_level_folder, text):
    ours = HFTokenizer.from_folder(byte_level_folder)
    hf = transformers.AutoTokenizer.from_pretrained(str(byte_level_folder))
    ids = ours.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False)
    assert ours.encode(text, add_bos=True) == hf.encode(text, add_special_tokens=True)
    assert ours.decode(ids) == text == hf.decode(ids, clean_up_tokenization_spaces=False)


def test_byte_level_settings(byte_level_folder):
    ours = HFTokenizer.from_folder(byte_level_folder)
    assert ours.bos_id == ours.token_to_id("<|begin_of_text|>") is not None
    assert ours.eos_id == ours.token_to_id("<|eot_id|>") is not None
    assert ours.add_bos is True  # from the TemplateProcessing post-processor
    assert ours.special_ids == {ours.bos_id, ours.eos_id, ours.token_to_id("<|reserved|>")}
    assert ours.strips_leading_space is False
    text = "hi<|eot_id|>there"
    assert ours.eos_id in ours.encode(text)
    plain = ours.encode(text, allow_special=False)
    assert ours.eos_id not in plain and ours.decode(plain) == text
    assert ours.decode(ours.encode(text), skip_special=True) == "hithere"
    assert ours.token_bytes(ours.eos_id) == b"<|eot_id|>"
    assert ours.token_bytes(ours.encode(" world")[0]).startswith(b" ")


@pytest.mark.parametrize(
    "text", ["hello world", " hello  world", "héllo wörld!", "日本", "hello\n\nworld", ""]
)
def test_sentencepiece_matches_transformers(spiece_folder, text):
    ours = HFTokenizer.from_folder(spiece_folder)
    hf = transformers.AutoTokenizer.from_pretrained(str(spiece_folder))
    ids = ours.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False)
    assert ours.decode(ids) == hf.decode(ids)
    # Transformers' Metaspace adds no "▁" to text that starts with a space, yet decoding strips one.
    assert ours.decode(ids) == text.removeprefix(" ")
    with_bos = ours.encode(text, add_bos=True)
    assert with_bos == [1] + ids
    assert ours.decode(with_bos, skip_special=True) == hf.decode(with_bos, skip_special_tokens=True)


def test_sentencepiece_settings(spiece_folder):
    ours = HFTokenizer.from_folder(spiece_folder)
    assert (ours.bos_id, ours.eos_id) == (1, 2)
    assert ours.strips_leading_space is True  # the Strip decoder drops the prepended space
    assert ours.token_bytes(ours.token_to_id("<0xC3>")) == b"\xc3"
    assert ours.token_bytes(ours.token_to_id("▁hello")) == b" hello"
    assert ours.vocab_size == 3 + 256 + 18


def test_old_style_tokenizer_config(byte_level_folder, tmp_path):
    """tokenizer_config.json from Transformers 4.x: added_tokens_decoder, add_bos_token, dict tokens."""
    for name in ("tokenizer.json",):
        (tmp_path / name).write_bytes((byte_level_folder / name).read_bytes())
    base = HFTokenizer.from_folder(byte_level_folder)
    reserved = base.token_to_id("<|reserved|>")
    hello = base.encode("Hello")[0]
    config = {
        "add_bos_token": False,
        "bos_token": {"content": "<|begin_of_text|>", "lstrip": False, "special": True},
        "eos_token": "<|reserved|>",
        # Marks an ordinary token special too: the config adds to tokenizer.json's flags.
        "added_tokens_decoder": {str(hello): {"content": "Hello", "special": True}},
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours = HFTokenizer.from_folder(tmp_path)
    assert ours.add_bos is False
    assert ours.bos_id == base.bos_id and ours.eos_id == reserved
    assert hello in ours.special_ids and reserved in ours.special_ids


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"no tokenizer\.json"):
        HFTokenizer.from_folder(tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "cannot read"),
        ("[1, 2]", "JSON object"),
        ('{"model": {"type": "Nope"}}', "not a valid tokenizer"),
    ],
)
def test_corrupt_tokenizer_json(tmp_path, content, message):
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(CheckpointError, match=message):
        HFTokenizer.from_folder(tmp_path)


def test_corrupt_tokenizer_config(byte_level_folder, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((byte_level_folder / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json"):
        HFTokenizer.from_folder(tmp_path)
