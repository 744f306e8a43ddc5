"""Code Shield: Meta's insecure-code detector (the `codeshield` package) on code the model writes or runs.

Code comes from two places: fenced blocks in a reply (```python ... ```; a block still open when a stream is
cut counts too), and a code-interpreter call, whose whole text is code in `subject.language_hint`. Each block
is scanned with the rules of its language; a block with no language tag, or a tag we cannot place, is scanned
with every language codeshield has rules for (as `CodeShield.scan_code` does without a language); blocks that
are not code (text, json, output...) or in a language codeshield has no rules for (shell, SQL, HTML) are skipped.

codeshield runs two analyzers: fast regexes (~10 ms a block) and, when a cheap pre-scan regex says it may
find something, semgrep (a subprocess: ~0.2 s on a quiet machine, up to ~3 s on a loaded one). `semgrep=False`
keeps only the regexes, for checks on a stream every few tokens. semgrep runs with `--metrics off`, and makes
no network connection (checked with strace: no connect() at all).

Why we call `insecure_code_detector.analyze` instead of `CodeShield.scan_code`: scan_code writes the code to
an absolute temp path and semgrep (>= 1.1xx) then gets `--project-root /`, which makes it scan nothing (it
warns that "/" does not contain the file), so semgrep's findings (`subprocess` with `shell=True`, SQL built
from strings...) were silently lost; and scan_code logs and swallows every error, which would turn a guard
that cannot run into a guard that says "safe". We hand analyze a relative path (then no project root is
passed), let errors surface as LlamarunError, and apply scan_code's own rule for the treatment: an issue of
severity error recommends block, any other issue warn.

The relative path must also lie inside the folder semgrep runs in: run from a git checkout, semgrep takes the
checkout as its project root and refuses `../file` ("cannot make path relative to project root", exit 2,
which codeshield only logs). So each scan writes its code into a fresh temp folder and semgrep runs there:
codeshield's `_run_command` is replaced once by `_run_in_scan_folder`, which takes that folder from a context
variable (each scan task has its own) and raises on semgrep's failure instead of returning no findings.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass

from llamarun.errors import LlamarunError
from llamarun.safety.verdict import Subject, Verdict

# A fence opening with an optional info string, its body, and its close (or the end of a cut-off stream).
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*\1[ \t]*$|\Z)", re.DOTALL | re.M)

# Fence tags and hints, as people write them, to codeshield's language names.
_LANGUAGE_ALIASES = {
    "c": "c", "h": "c", "cpp": "cpp", "c++": "cpp", "cc": "cpp", "cxx": "cpp", "hpp": "cpp",
    "cs": "csharp", "csharp": "csharp", "c#": "csharp", "hack": "hack", "hh": "hack", "java": "java",
    "js": "javascript", "javascript": "javascript", "jsx": "javascript", "node": "javascript",
    "ts": "javascript", "typescript": "javascript", "tsx": "javascript", "kotlin": "kotlin", "kt": "kotlin",
    "objc": "objective_c", "objective-c": "objective_c", "objectivec": "objective_c",
    "objective-c++": "objective_cpp", "php": "php", "py": "python", "python": "python", "python3": "python",
    "ipython": "python", "rb": "ruby", "ruby": "ruby", "rs": "rust", "rust": "rust", "swift": "swift",
    "xml": "xml",
}
# Tags of blocks with nothing to scan: no program text, or a language codeshield has no rules for (scanning a
# shell script with the rules of eight other languages would cost eight semgrep runs and find only noise).
_NOT_CODE = frozenset({"text", "txt", "plain", "plaintext", "json", "jsonl", "yaml", "yml", "toml", "ini", "csv",
                       "markdown", "md", "output", "console", "log", "diff", "mermaid", "bash", "sh", "shell",
                       "zsh", "powershell", "ps1", "bat", "cmd", "sql", "html", "css", "dockerfile", "makefile"})


@dataclass(frozen=True)
class CodeBlock:
    """A piece of code to scan; language is a codeshield language name, or None for every language."""

    code: str
    language: str | None
    tag: str = ""  # as written (the fence's info string or the hint), for people


def code_blocks(subject: Subject) -> list[CodeBlock]:
    """The code in `subject`: the whole text for a code-interpreter call (a tool call with a language hint),
    else its fenced blocks."""
    if subject.kind == "tool_call" and subject.language_hint:
        block = _block(subject.text, subject.language_hint)
        return [block] if block is not None else []
    blocks = (_block(match.group(3), match.group(2)) for match in _FENCE.finditer(subject.text))
    return [block for block in blocks if block is not None]


def _block(code: str, tag: str) -> CodeBlock | None:
    tag = tag.strip().lower()
    if tag in _NOT_CODE or not code.strip():
        return None
    return CodeBlock(code, _LANGUAGE_ALIASES.get(tag), tag)


class CodeShield:
    """The guard that scans generated code with codeshield's insecure-code rules.

    semgrep: also run codeshield's semgrep rules (slower, finds more); False keeps the regex rules only.
    timeout_s: the most one scan may take; a scan that takes longer is a LlamarunError (the guard cannot run).
    """

    name = "code_shield"
    kinds = frozenset({"output", "tool_call"})

    def __init__(self, *, semgrep: bool = True, timeout_s: float = 30.0) -> None:
        if timeout_s <= 0:
            raise LlamarunError(f"code shield timeout {timeout_s} s is not positive", "give a number of seconds > 0")
        try:
            with warnings.catch_warnings():  # codeshield's own use of a deprecated importlib.resources call
                warnings.simplefilter("ignore", DeprecationWarning)
                from codeshield.insecure_code_detector import insecure_code_detector, languages, oss
        except ImportError as error:
            raise LlamarunError("Code Shield needs the codeshield package",
                                "pip install 'llamarun[safety]'") from error
        except Exception as error:  # codeshield links semgrep's binary into its package on import
            raise LlamarunError(f"codeshield could not start: {error}", "check the semgrep install") from error
        insecure_code_detector._run_command = _run_in_scan_folder  # see the module docstring
        self._analyze = insecure_code_detector.analyze
        self._languages = languages
        self._oss = oss
        self.semgrep = semgrep
        self.timeout_s = timeout_s

    async def check(self, subject: Subject) -> Verdict:
        """Scan every code block in `subject`; unsafe when any block has an issue."""
        blocks = code_blocks(subject)
        if not blocks:
            return Verdict(self.name, True, detail="no code to scan")
        try:
            # semgrep takes seconds: a stream's partial checks keep to the regexes, its final check runs both
            deep = self.semgrep and not subject.partial
            found = await asyncio.wait_for(asyncio.gather(*(self._scan(block, deep) for block in blocks)),
                                           self.timeout_s)
        except TimeoutError:
            raise LlamarunError(f"Code Shield took over {self.timeout_s} s",
                                "raise the timeout, or scan with semgrep off") from None
        issues = [issue for block_issues in found for issue in block_issues]
        if not issues:
            return Verdict(self.name, True, detail=f"{len(blocks)} code block(s), no issues",
                           extra={"blocks": len(blocks)})
        categories = tuple(dict.fromkeys(issue["cwe_id"] or issue["pattern_id"] for issue in issues))
        treatment = "block" if any(issue["severity"] == "error" for issue in issues) else "warn"
        detail = "; ".join(dict.fromkeys(issue["description"].strip() for issue in issues))
        return Verdict(self.name, False, categories=categories, detail=detail,
                       extra={"issues": issues, "recommended_treatment": treatment, "blocks": len(blocks)})

    async def _scan(self, block: CodeBlock, deep: bool) -> list[dict]:
        """The issues codeshield finds in one block, as plain dicts (for the API's JSON)."""
        from codeshield.insecure_code_detector.usecases import UseCase

        if block.language is not None:
            targets = [self._languages.Language(block.language)]
        else:
            targets = self._languages.get_supported_languages()
        results = await asyncio.gather(*(self._scan_as(block.code, language, UseCase.CODESHIELD, deep)
                                         for language in targets))
        issues, seen = [], set()
        for language, language_issues in zip(targets, results, strict=True):
            for issue in language_issues:
                key = (issue.cwe_id, issue.pattern_id, issue.line)
                if key in seen:  # the same finding from two languages' rules
                    continue
                seen.add(key)
                issues.append({"cwe_id": issue.cwe_id or "", "pattern_id": issue.pattern_id or "",
                               "severity": str(issue.severity).lower(), "line": issue.line,
                               "analyzer": str(issue.analyzer), "description": issue.description or "",
                               "language": str(language), "tag": block.tag})
        return issues

    async def _scan_as(self, code: str, language, usecase, deep: bool) -> list:  # language: codeshield Language
        """codeshield's analyzers on `code` as `language`; semgrep runs in the code's own temp folder."""
        name = "snippet" + self._languages.get_file_extension(language)
        folder = tempfile.mkdtemp(prefix="llamarun-codeshield-")
        token = _SCAN_FOLDER.set(folder)
        try:
            with open(os.path.join(folder, name), "w", encoding="utf-8") as file:
                file.write(code)
            if deep:
                return await self._analyze(language, code, path=name, usecase=usecase)
            return await self._regex_only(language, code, name, usecase)
        except LlamarunError:
            raise
        except Exception as error:
            raise LlamarunError(f"Code Shield failed on a {language} block: {error}") from error
        finally:
            _SCAN_FOLDER.reset(token)
            shutil.rmtree(folder, ignore_errors=True)

    async def _regex_only(self, language, code: str, relative: str, usecase) -> list:
        """analyze with its semgrep switch off, for this call only (the switch is a module global)."""
        enabled = self._oss.ENABLE_SEMGREP
        self._oss.ENABLE_SEMGREP = False
        try:
            return await self._analyze(language, code, path=relative, usecase=usecase)
        finally:
            self._oss.ENABLE_SEMGREP = enabled


_SCAN_FOLDER: contextvars.ContextVar[str | None] = contextvars.ContextVar("codeshield_scan_folder", default=None)


async def _run_in_scan_folder(command: list[str]) -> str:
    """codeshield's semgrep call, run in the scan's own folder; a failed run is an error, never "no findings"."""
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE, cwd=_SCAN_FOLDER.get())
    stdout, stderr = await process.communicate()
    if process.returncode not in (0, 1):  # 1: findings with --error; anything else: semgrep did not scan
        last = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise LlamarunError(f"semgrep failed (exit {process.returncode}): {last[0][:300]}",
                            "check the semgrep install, or run Code Shield with semgrep off")
    return stdout.decode("utf-8")
