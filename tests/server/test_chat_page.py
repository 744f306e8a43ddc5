"""The chat page at `/` in headless Chromium against a live server on a tiny random Llama.

A real browser (Debian's `chromium`, driven by Playwright) loads the page from the real FastAPI app
under uvicorn, which serves a tiny HF checkpoint through the batched engine. The tiny model writes
gibberish, and its byte vocabulary has no end-of-turn token, so every reply runs to max_tokens (the
token count the page shows must equal it) and a reply with no limit runs for seconds, long enough to
be stopped.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (scripts/install_chromium.sh installs it)",
                allow_module_level=True)

from conftest import live_server  # noqa: E402
from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf  # noqa: E402

from llamarun.server import ModelManager, create_app  # noqa: E402
from llamarun.server.model_manager import default_loader  # noqa: E402
from llamarun.store.home import ModelStore  # noqa: E402
from llamarun.store.resolve import resolve_model  # noqa: E402

KEY = "chat-page-secret"
CONTEXT = 32768
REPLY_TOKENS = 400  # several animation frames of streaming even on a fast, idle machine
# Replies stream from a real engine on a shared 2-core machine: give assertions time (Playwright's default is 5 s).
expect.set_options(timeout=60_000)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STATS = re.compile(r"(\d+) tokens · ([\d.]+) tokens/s")
# Records the length of the reply being streamed each time the page changes it.
WATCH_REPLY = """() => {
  window.replyLengths = [];
  new MutationObserver(() => {
    const texts = document.querySelectorAll('#log .msg.assistant .text');
    if (texts.length) window.replyLengths.push(texts[texts.length - 1].textContent.length);
  }).observe(document.getElementById('log'), {subtree: true, characterData: true, childList: true});
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, model id): the real app with an API key, the tiny model preloaded, on a free port."""
    root = tmp_path_factory.mktemp("chat-page")
    # A reply with no limit runs until the 32k context is full: several seconds even on a fast, idle machine,
    # which leaves time to press Stop.
    spec = TinySpec(max_position_embeddings=CONTEXT)
    model = add_byte_tokenizer(write_hf(spec, make_weights(spec)[0], root / "tiny"))
    store = ModelStore(root / "home")  # empty: the page lists the loaded model only
    resolve = lambda name: resolve_model(name, pull=False, store=store).name  # noqa: E731
    manager = ModelManager(default_loader(), resolve=resolve, context_length=CONTEXT)
    app = create_app(manager, api_key=KEY, store=store, preload=str(model))
    with live_server(app, timeout=120) as base:
        yield base, str(model)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, server: tuple[str, str]) -> Iterator[Page]:
    """A fresh browser context (empty localStorage) on a phone-sized screen."""
    context = browser.new_context(viewport={"width": 420, "height": 760})
    context.set_default_timeout(30_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def open_with_key(page: Page, base: str, model: str) -> None:
    """Open the page with the right key already in localStorage, as a returning user."""
    page.add_init_script(f"localStorage.setItem('llamarun.apiKey', {json.dumps(KEY)})")
    page.goto(base + "/")
    expect(page.locator("#model option")).to_have_count(1)
    assert page.locator("#model").input_value() == model
    expect(page.locator("#error")).to_be_hidden()
    page.click("#settings-box summary")


def chat_bodies(page: Page) -> list[dict[str, Any]]:
    """The JSON bodies of every chat request the page sends from now on."""
    bodies: list[dict[str, Any]] = []
    page.on("request", lambda r: bodies.append(r.post_data_json)
            if r.url.endswith("/v1/chat/completions") else None)
    return bodies


def post_json(base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def aborted_generations(base: str) -> float:
    req = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("llamarun_generations_total{") and 'finish_reason="abort"' in line)


def test_page_shows_the_api_error_until_the_right_key_is_set(page: Page, server: tuple[str, str]) -> None:
    base, model = server
    page.goto(base + "/")
    error = page.locator("#error")
    expect(error).to_contain_text("Error 401: Incorrect or missing API key")  # the server's own message
    expect(page.locator("#model option")).to_have_count(0)
    page.click("#settings-box summary")
    page.fill("#api-key", "not-the-key")
    page.dispatch_event("#api-key", "change")
    expect(error).to_contain_text("Error 401")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    expect(error).to_be_hidden()
    expect(page.locator("#model option")).to_have_text([model])
    assert page.evaluate("localStorage.getItem('llamarun.apiKey')") == KEY
    page.fill("#api-key", "")
    page.dispatch_event("#api-key", "change")  # clearing the field forgets the key
    assert page.evaluate("localStorage.getItem('llamarun.apiKey')") is None


def test_reply_streams_in_shows_tokens_per_second_and_keeps_the_conversation(
        page: Page, server: tuple[str, str]) -> None:
    base, model = server
    open_with_key(page, base, model)
    bodies = chat_bodies(page)
    page.fill("#system", "You are terse.")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", str(REPLY_TOKENS))
    page.evaluate(WATCH_REPLY)
    page.fill("#input", "Hello there")
    page.press("#input", "Enter")

    stats = page.locator("#log .msg.assistant .stats").nth(0)
    expect(stats).to_contain_text("tokens/s")
    count, rate = STATS.search(stats.text_content() or "").groups()
    assert float(rate) > 0
    reply = page.locator("#log .msg.assistant .text").nth(0).text_content() or ""
    lengths = page.evaluate("window.replyLengths")
    grown = sorted(set(lengths))
    assert lengths == sorted(lengths) and len(grown) >= 3, lengths  # it arrived in pieces, and only grew
    assert grown[-1] == len(reply.encode("utf-16-le")) // 2 > 0  # JS lengths count UTF-16 units
    # The page put the SSE deltas together right: greedy decoding gives the same text without streaming.
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"}]
    assert bodies[0]["messages"] == messages and bodies[0]["stream"] is True
    assert bodies[0]["stream_options"] == {"include_usage": True}
    whole = post_json(base, "/v1/chat/completions",
                      {"model": model, "messages": messages, "temperature": 0, "max_tokens": REPLY_TOKENS})
    assert whole["choices"][0]["message"]["content"] == reply
    assert int(count) == whole["usage"]["completion_tokens"] == REPLY_TOKENS  # the page shows the server's usage

    page.fill("#input", "And again")
    page.click("#send")
    expect(page.locator("#log .msg.assistant .stats").nth(1)).to_contain_text("tokens/s")
    assert bodies[1]["messages"] == [*messages, {"role": "assistant", "content": reply},
                                     {"role": "user", "content": "And again"}]
    expect(page.locator("#log .msg")).to_have_count(4)
    if os.environ.get("LLAMARUN_CHAT_SCREENSHOT"):
        page.screenshot(path=os.environ["LLAMARUN_CHAT_SCREENSHOT"])


def test_stop_aborts_the_request_and_new_chat_starts_over(page: Page, server: tuple[str, str]) -> None:
    base, model = server
    open_with_key(page, base, model)
    bodies = chat_bodies(page)
    aborted_before = aborted_generations(base)
    page.fill("#input", "Tell me everything")  # no max tokens: it would run until the context is full
    page.click("#send")
    text = page.locator("#log .msg.assistant .text")
    expect(text).not_to_have_text("")
    page.click("#stop")  # a real click: the page must stay responsive while a fast reply streams in
    expect(page.locator("#log .msg.assistant .stats")).to_contain_text("stopped")
    expect(page.locator("#send")).to_be_visible()
    stopped_at = len(text.text_content() or "")
    time.sleep(0.5)
    assert len(text.text_content() or "") == stopped_at
    deadline = time.monotonic() + 10  # the server sees the disconnect and aborts the engine request
    while aborted_generations(base) <= aborted_before:
        assert time.monotonic() < deadline, "the server never aborted the stopped request"
        time.sleep(0.1)

    page.click("#new-chat")
    expect(page.locator("#log .msg")).to_have_count(0)
    page.fill("#max-tokens", "5")
    page.fill("#input", "Fresh start")
    page.press("#input", "Enter")
    expect(page.locator("#log .msg.assistant .stats")).to_contain_text("5 tokens")
    assert bodies[-1]["messages"] == [{"role": "user", "content": "Fresh start"}]


def test_an_error_answer_shows_its_message_and_gives_the_text_back(
        page: Page, server: tuple[str, str]) -> None:
    base, model = server
    open_with_key(page, base, model)
    page.fill("#max-tokens", "100000")  # more than the 32768-token context: OpenAI's 400
    page.fill("#input", "Too long please")
    page.click("#send")
    error = page.locator("#error")
    expect(error).to_contain_text(f"Error 400: this model's context holds {CONTEXT} tokens")
    expect(page.locator("#log .msg")).to_have_count(0)
    assert page.input_value("#input") == "Too long please"  # ready to retry
    page.fill("#max-tokens", "3")
    page.click("#send")
    expect(page.locator("#log .msg.assistant .stats")).to_contain_text("3 tokens")
    expect(error).to_be_hidden()
