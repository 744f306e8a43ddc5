"""Code Shield on real snippets: known insecure code is flagged with its CWE, clean code passes, and code is
found where it lives (fenced blocks of a reply, a code-interpreter call)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

pytest.importorskip("codeshield")

from llamarun.errors import LlamarunError
from llamarun.safety.code_shield import CodeShield, code_blocks
from llamarun.safety.verdict import Subject

MD5_PASSWORD = "import hashlib\n\ndef hash_password(password):\n    return hashlib.md5(password.encode()).hexdigest()\n"
SHELL_TRUE = "import subprocess\n\ndef run(command):\n    subprocess.run(command, shell=True)\n"
C_GETS = "#include <stdio.h>\n\nint main(void) {\n    char name[16];\n    gets(name);\n    return 0;\n}\n"
CLEAN = ("import hashlib\nimport subprocess\n\ndef digest(data: bytes) -> str:\n    return hashlib.sha256(data)"
         ".hexdigest()\n\ndef run(args: list[str]) -> None:\n    subprocess.run(args, check=True)\n")


def reply(code: str, tag: str = "python") -> Subject:
    return Subject("output", f"Here is the code you asked for:\n```{tag}\n{code}```\nLet me know if it helps.")


def check(guard: CodeShield, subject: Subject):
    return asyncio.run(guard.check(subject))


@pytest.fixture(scope="module")
def guard() -> CodeShield:
    return CodeShield()


@pytest.fixture(scope="module")
def regex_guard() -> CodeShield:
    return CodeShield(semgrep=False)


def test_md5_for_passwords_is_flagged_with_its_cwe(regex_guard: CodeShield) -> None:
    verdict = check(regex_guard, reply(MD5_PASSWORD))
    assert not verdict.safe
    assert verdict.guard == "code_shield"
    assert verdict.categories == ("CWE-328",)
    assert "MD5" in verdict.detail
    issue = verdict.extra["issues"][0]
    assert issue["line"] == 4 and issue["language"] == "python" and issue["analyzer"] == "regex"
    assert verdict.extra["recommended_treatment"] == "warn"  # codeshield rates it a warning, not an error


@pytest.mark.slow  # semgrep: ~2.5 s of CPU a run
def test_subprocess_with_shell_true_is_flagged_by_semgrep(guard: CodeShield) -> None:
    # only codeshield's semgrep rules know this one: it fails if semgrep silently scans nothing
    verdict = check(guard, reply(SHELL_TRUE))
    assert verdict.categories == ("CWE-78",)
    assert "shell=True" in verdict.detail
    assert verdict.extra["issues"][0]["analyzer"] == "semgrep"
    assert verdict.extra["issues"][0]["line"] == 4


def test_a_streams_partial_checks_keep_to_the_regexes(guard: CodeShield) -> None:
    # semgrep takes seconds: mid-stream checks skip it, the final whole-reply check (not partial) runs it
    partial = dataclasses.replace(reply(SHELL_TRUE), partial=True)
    assert check(guard, partial).safe
    assert not check(guard, dataclasses.replace(reply(MD5_PASSWORD), partial=True)).safe  # regexes still run


def test_regex_only_mode_misses_what_only_semgrep_finds(regex_guard: CodeShield) -> None:
    from codeshield.insecure_code_detector import oss

    assert check(regex_guard, reply(SHELL_TRUE)).safe  # the documented price of the fast mode
    assert oss.ENABLE_SEMGREP  # and the module switch is back on for everyone else


@pytest.mark.slow  # semgrep: ~2.5 s of CPU a run
def test_a_code_interpreter_call_is_scanned_as_a_whole(guard: CodeShield) -> None:
    verdict = check(guard, Subject("tool_call", SHELL_TRUE, language_hint="python"))
    assert verdict.categories == ("CWE-78",)


def test_c_code_in_a_reply_is_scanned_with_c_rules(regex_guard: CodeShield) -> None:
    verdict = check(regex_guard, reply(C_GETS, "c"))
    assert not verdict.safe
    assert {issue["language"] for issue in verdict.extra["issues"]} == {"c"}


def test_an_untagged_block_is_scanned_with_every_language(regex_guard: CodeShield) -> None:
    verdict = check(regex_guard, reply(MD5_PASSWORD, ""))
    assert not verdict.safe
    assert len({issue["language"] for issue in verdict.extra["issues"]}) > 1


@pytest.mark.slow  # semgrep: ~2.5 s of CPU a run
def test_clean_code_passes(guard: CodeShield) -> None:
    verdict = check(guard, reply(CLEAN))
    assert verdict.safe and verdict.categories == ()
    assert verdict.extra["blocks"] == 1


def test_text_without_code_passes_without_scanning(guard: CodeShield) -> None:
    verdict = check(guard, Subject("output", "MD5 is a hash function; do not use it for passwords."))
    assert verdict.safe and verdict.detail == "no code to scan"


def test_one_bad_block_among_clean_ones_flags_the_reply(regex_guard: CodeShield) -> None:
    text = f"First:\n```python\n{CLEAN}```\nThen:\n```py\n{MD5_PASSWORD}```\n"
    verdict = check(regex_guard, Subject("output", text))
    assert not verdict.safe and verdict.extra["blocks"] == 2
    assert [issue["tag"] for issue in verdict.extra["issues"]] == ["py"]


def test_code_blocks_finds_fences_their_languages_and_a_cut_off_block() -> None:
    text = ("intro\n```Python\nprint(1)\n```\n~~~js\nconsole.log(2)\n~~~\n```json\n{\"a\": 1}\n```\n"
            "```rust\nfn main() {}\n```\n```bash\nrm -rf build\n```\n```\nplain()\n```\n"
            "and then a stream cut inside\n```cpp\nint x")
    blocks = code_blocks(Subject("output", text))
    assert [(b.tag, b.language) for b in blocks] == [
        ("python", "python"), ("js", "javascript"), ("rust", "rust"), ("", None), ("cpp", "cpp")]
    assert blocks[0].code == "print(1)\n"
    assert blocks[-1].code == "int x"


def test_a_tool_call_without_a_language_hint_is_not_taken_for_code() -> None:
    assert code_blocks(Subject("tool_call", '{"city": "Paris"}')) == []


def test_a_scan_over_its_time_limit_is_a_user_error() -> None:
    with pytest.raises(LlamarunError):
        check(CodeShield(timeout_s=1e-6), reply(SHELL_TRUE))


@pytest.mark.parametrize("timeout_s", [0, -1.0])
def test_a_bad_timeout_is_a_user_error(timeout_s: float) -> None:
    with pytest.raises(LlamarunError):
        CodeShield(timeout_s=timeout_s)


def test_the_guard_declares_its_kinds(guard: CodeShield) -> None:
    assert guard.name == "code_shield" and guard.kinds == frozenset({"output", "tool_call"})


def test_a_semgrep_that_fails_is_an_error_not_a_clean_scan() -> None:
    # codeshield only logs a failed semgrep run and reports no findings; ours raises, so the guard is not "safe"
    from llamarun.errors import LlamarunError
    from llamarun.safety.code_shield import _run_in_scan_folder

    with pytest.raises(LlamarunError, match="semgrep failed \\(exit 2\\): cannot make path relative"):
        asyncio.run(_run_in_scan_folder(["sh", "-c", "echo 'cannot make path relative' >&2; exit 2"]))
