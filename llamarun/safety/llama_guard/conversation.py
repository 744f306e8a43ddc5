"""A guard subject as the conversation Llama Guard reads: alternating "User" and "Agent" turns.

Llama Guard knows two roles. The judged text is the last turn: a user's input and a tool's result are
"User" (text that comes into the model from outside: a tool result is where indirect prompt injection
hides), the model's reply and the calls it makes are "Agent" (S14, Code Interpreter Abuse, is judged on
the agent's calls). Earlier turns are context: system prompts are left out (the model was trained on
user/agent conversations only), tool turns count as "User", and consecutive turns of one role are joined
with a blank line, because the models' templates require the roles to alternate.
"""

from __future__ import annotations

from llamarun.safety.llama_guard.prompt import Role, Turn
from llamarun.safety.verdict import Message, Subject

_SUBJECT_ROLE: dict[str, Role] = {"input": "User", "tool_result": "User", "output": "Agent", "tool_call": "Agent"}
_HISTORY_ROLE: dict[str, Role] = {"user": "User", "tool": "User", "ipython": "User", "assistant": "Agent"}


def subject_role(subject: Subject) -> Role:
    """The role whose message is judged."""
    return _SUBJECT_ROLE[subject.kind]


def conversation(subject: Subject, history: tuple[Message, ...] | None = None) -> list[Turn]:
    """The turns of `subject` (its history, or `history` when given, then its text), merged to alternate."""
    turns: list[Turn] = []
    for message in subject.history if history is None else history:
        role = _HISTORY_ROLE.get(message.role)
        if role is not None and message.content.strip():
            _append(turns, Turn(role, message.content))
    _append(turns, Turn(subject_role(subject), subject.text))
    return turns


def _append(turns: list[Turn], turn: Turn) -> None:
    if turns and turns[-1].role == turn.role:
        turns[-1] = Turn(turn.role, f"{turns[-1].text.strip()}\n\n{turn.text.strip()}")
    else:
        turns.append(turn)
