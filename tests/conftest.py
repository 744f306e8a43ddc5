"""Shared fixtures: the real default model (fetched once into a cache shared by test runs), the native CPU kernels
compiled once per session, and a llamarun home holding the default model shared by the tests that only run it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 GGUF, the bundled default model."""
    override = os.environ.get("LLAMARUN_TEST_GGUF")
    if override:
        return Path(override)
    from llamarun.store.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def native_kernels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The native CPU kernels (llamarun/kernels/cpu/*.c), compiled once for the session into a folder of their own.

    A llamarun process compiles them into its home on first use (a few seconds); a test that starts llamarun in a
    fresh home gets them from here instead (`seed_kernels`). Empty where they cannot be built (no AVX2, no compiler,
    switched off): the processes then decide for themselves exactly as without the seed.
    """
    from llamarun.kernels.cpu import build

    home = tmp_path_factory.mktemp("kernels-home")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    compile_one = getattr(build, "_compiled", None)  # (source, flags) -> library in the home, named by their digest
    if (os.environ.get(build.ENV, "auto").strip().lower() == "off" or compiler is None or compile_one is None
            or not build.cpu_has_avx2()):
        return home / "kernels"
    saved = os.environ.get("LLAMARUN_HOME")
    os.environ["LLAMARUN_HOME"] = str(home)  # build._compiled writes into the home's kernels/ folder
    try:
        for source in sorted(build.HERE.glob("*.c")):
            with contextlib.suppress(OSError, subprocess.SubprocessError):  # then the process that needs it builds it
                compile_one(compiler, source)
    finally:
        if saved is None:
            os.environ.pop("LLAMARUN_HOME", None)
        else:
            os.environ["LLAMARUN_HOME"] = saved
    return home / "kernels"


@pytest.fixture(scope="session")
def seed_kernels(native_kernels: Path) -> Callable[[Path], Path]:
    """seed_kernels(home) -> home: the session's compiled kernels hard-linked into `home`/kernels, under the names
    (source and flags digest) llamarun looks for, so a llamarun process in that home does not compile them again."""

    def seed(home: Path) -> Path:
        target = Path(home) / "kernels"
        target.mkdir(parents=True, exist_ok=True)
        for lib in native_kernels.glob("*.so") if native_kernels.is_dir() else ():
            if not (target / lib.name).exists():
                try:
                    os.link(lib, target / lib.name)
                except OSError:
                    shutil.copy2(lib, target / lib.name)
        return Path(home)

    return seed


@pytest.fixture(scope="session")
def default_home(tmp_path_factory: pytest.TempPathFactory, default_gguf: Path,
                 seed_kernels: Callable[[Path], Path]) -> Path:
    """A llamarun home holding the default model (hard-linked), shared by the tests that run it without changing
    the store: its prepared CPU model is built by the first run and mapped by the later ones."""
    from llamarun.store.default_model import install_default_model_from
    from llamarun.store.home import ModelStore

    root = seed_kernels(tmp_path_factory.mktemp("llamarun-home"))
    install_default_model_from(default_gguf, ModelStore(root))
    return root


@pytest.fixture(scope="session")
def default_gguf_reader(default_gguf: Path):
    """The gguf package's own `GGUFReader` over the default model, parsed once (seconds: it makes an array of every
    vocabulary string and merge). Read-only: the file is mapped, and the tests only read fields and tensors."""
    from gguf import GGUFReader

    return GGUFReader(default_gguf)


@pytest.fixture(scope="session")
def reuse_default_gguf_reader(default_gguf: Path, default_gguf_reader) -> Callable[[], AbstractContextManager[None]]:
    """`with reuse_default_gguf_reader():` Transformers' GGUF loading gets the session's parsed reader of the default
    model instead of parsing the file again (it parses it once for the config, once for the weights and once for a
    tokenizer: seconds each). The reader is gguf's own over the same file, so what Transformers builds is the same."""
    import gguf

    @contextlib.contextmanager
    def reuse() -> Iterator[None]:
        original = gguf.GGUFReader

        def reader(path, *args, **kwargs):
            if not args and not kwargs and Path(path).resolve() == default_gguf.resolve():
                return default_gguf_reader
            return original(path, *args, **kwargs)

        gguf.GGUFReader = reader  # transformers imports it from gguf at each load
        try:
            yield
        finally:
            gguf.GGUFReader = original

    return reuse


@pytest.fixture(scope="session")
def default_hf_tokenizer(default_gguf: Path, reuse_default_gguf_reader):
    """Transformers' tokenizer built from the default model's GGUF, once (seconds: the GGUF's vocabulary converted
    to a fast tokenizer). Tests only encode, decode and apply chat templates with it."""
    import transformers

    with reuse_default_gguf_reader():
        return transformers.AutoTokenizer.from_pretrained(str(default_gguf.parent), gguf_file=default_gguf.name)
