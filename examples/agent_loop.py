"""An agent loop through the `openai` client: the model calls real local tools until it can answer.

Two tools run here, on this machine: `calculate` (arithmetic, evaluated from its syntax tree, never
with eval) and `search_files` (lines of text files under a folder that contain a phrase). Start a
server, then ask:

    llamarun serve                      # the default model, on http://127.0.0.1:11434
    python examples/agent_loop.py "What is 17.5% of 2,480?"
    python examples/agent_loop.py --model llama3.3:70b --folder docs "Which file mentions CUDA graphs?"

Any Llama 3.1/3.2/3.3 Instruct model calls tools reliably; the small default model tries.
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

TOOLS = [
    {"type": "function", "function": {
        "name": "calculate", "description": "Evaluate an arithmetic expression, e.g. '(2 + 3) * 4 / 5'.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]}}},
    {"type": "function", "function": {
        "name": "search_files", "description": "Find lines containing a phrase in the text files of the folder.",
        "parameters": {"type": "object", "properties": {"phrase": {"type": "string"}}, "required": ["phrase"]}}},
]
SYSTEM = "You are a careful assistant. Use the tools for arithmetic and for questions about files."

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPONENT = 1000  # 9 ** 9 ** 9 would keep the machine busy for hours
MAX_MATCHES = 20


def calculate(expression: str) -> str:
    """The value of an arithmetic expression (numbers, + - * / // % **, parentheses), or what is wrong."""
    try:
        return _number(_eval(ast.parse(expression.replace(",", ""), mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as err:
        return f"error: {err}"


def _eval(node: ast.expr) -> float | int:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right} is too large")
        return _BINARY[type(node.op)](left, right)
    raise ValueError(f"'{ast.unparse(node)}' is not arithmetic")


def _number(value: float | int) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def search_files(phrase: str, folder: Path) -> str:
    """`path:line: text` for each line of a text file under `folder` containing `phrase` (case-insensitive)."""
    needle, hits = phrase.lower(), []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (UnicodeDecodeError, OSError):
            continue  # binary or unreadable: not text to search
        hits += [f"{path.relative_to(folder)}:{n}: {line.strip()}" for n, line in enumerate(lines, 1)
                 if needle in line.lower()]
        if len(hits) >= MAX_MATCHES:
            break
    return "\n".join(hits[:MAX_MATCHES]) or f"no line contains '{phrase}'"


def run_tool(name: str, arguments: str, folder: Path) -> str:
    """One call's result as text; a bad call is answered, not raised, so the model can correct itself."""
    try:
        args = json.loads(arguments or "{}")
        if name == "calculate":
            return calculate(str(args["expression"]))
        if name == "search_files":
            return search_files(str(args["phrase"]), folder)
        return f"error: there is no tool named '{name}'"
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        return f"error: bad arguments for {name}: {err}"


def agent_loop(client: Any, model: str, question: str, folder: Path, max_steps: int = 6,
               log: Callable[[str], None] = lambda _: None) -> str:
    """Ask `question`; run each tool the model calls and send back its result, until it answers in text."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    for _ in range(max_steps):
        reply = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, temperature=0)
        message = reply.choices[0].message
        if not message.tool_calls:
            return message.content or ""
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            result = run_tool(call.function.name, call.function.arguments, folder)
            log(f"{call.function.name}({call.function.arguments}) -> {result}")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return f"(no answer after {max_steps} steps)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("question")
    parser.add_argument("--base-url", default="http://127.0.0.1:11434/v1", help="an OpenAI-compatible server")
    parser.add_argument("--model", default="smollm2:135m", help="the default model, or any Llama 3.x model")
    parser.add_argument("--folder", type=Path, default=Path.cwd(), help="where search_files looks")
    parser.add_argument("--api-key", default="none", help="the server's API key, if it has one")
    args = parser.parse_args(argv)
    import openai

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)
    try:
        answer = agent_loop(client, args.model, args.question, args.folder, log=lambda s: print(f"  [tool] {s}"))
    except openai.APIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
