"""Prompts: a string (one user turn) or a conversation (chat messages), validated in one place.

A conversation is what ``transformers``' ``pipeline("text-generation")`` and
``tokenizer.apply_chat_template`` take: ``[{"role": "system" | "user" | "assistant", "content": str}, ...]``,
its last message from the user. steerlib keeps it as a :class:`Chat` (an immutable, hashable tuple of
``(role, content)`` pairs) and renders it with the model's chat template, so steering sees exactly
the tokens the template gives. Anything that is neither a string nor such a list is refused here,
with what was given and what to pass, instead of being turned into its ``str()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

from ..errors import InputError

__all__ = ["ROLES", "Chat", "Prompt", "as_prompt", "as_prompts", "check_text", "edit_last_user", "is_messages",
           "prompt_text"]

#: The roles a message may have (a system message only first).
ROLES = ("system", "user", "assistant")


def check_text(text: str, where: str) -> str:
    """``text`` if it can be encoded as UTF-8; a lone UTF-16 surrogate (what Python makes of bytes
    that are not UTF-8 on a command line) is refused with its position."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        raise InputError(f"{where} holds a lone surrogate {ascii(bad)} at character {e.start}, which is not text "
                         "(a command line or file that was not UTF-8 gives these). Pass UTF-8 text: e.g. run with a "
                         "UTF-8 locale (PYTHONUTF8=1), or fix the file's encoding.") from None
    return text


class Chat(tuple):  # type: ignore[type-arg]
    """A conversation used as one prompt: ``((role, content), ...)``, the last turn the user's.

    Build it from chat messages, ``Chat([{"role": "user", "content": "Hi"}])``, or from pairs.
    :meth:`messages` gives the list ``apply_chat_template`` takes. It serialises to JSON as a list of
    ``[role, content]`` pairs and hashes like a tuple, so items holding it stay hashable.
    """

    def __new__(cls, messages: Sequence[Any], *, where: str = "the prompt") -> "Chat":
        if isinstance(messages, Chat):
            return messages
        if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
            raise InputError(f"{where}: a conversation is a list of chat messages "
                             f"[{{'role': ..., 'content': ...}}, ...], got a {type(messages).__name__}.")
        pairs: list[tuple[str, str]] = []
        for j, m in enumerate(messages):
            if isinstance(m, Mapping):
                extra = sorted(str(k) for k in m if k not in ("role", "content"))
                if "role" not in m or "content" not in m or extra:
                    raise InputError(f"{where}: message {j} has keys {sorted(map(str, m))}; a chat message has "
                                     "exactly 'role' and 'content'.")
                role, content = m["role"], m["content"]
            elif isinstance(m, tuple) and len(m) == 2:
                role, content = m
            else:
                raise InputError(f"{where}: message {j} is a {type(m).__name__}, not a chat message "
                                 "{'role': ..., 'content': ...}.")
            if role not in ROLES:
                raise InputError(f"{where}: message {j} has role {role!r}; use one of {', '.join(ROLES)}.")
            if not isinstance(content, str):
                raise InputError(f"{where}: message {j}'s content is a {type(content).__name__}, not a string "
                                 "(images go in images=, not in the messages).")
            check_text(content, f"{where}, message {j}")
            if role == "system" and j != 0:
                raise InputError(f"{where}: message {j} is a system message; a system message can only come first.")
            pairs.append((role, content))
        if not pairs or pairs[-1][0] != "user":
            last = pairs[-1][0] if pairs else "nothing"
            raise InputError(f"{where}: a conversation must end with a user message (the model answers it), "
                             f"but it ends with {last}.")
        return super().__new__(cls, pairs)

    @property
    def system(self) -> str | None:
        """The system message's content, or None."""
        return self[0][1] if self[0][0] == "system" else None

    @property
    def last_user(self) -> str:
        """The content of the last (user) message."""
        return str(self[-1][1])

    def messages(self, *, parts: bool = False) -> list[dict[str, Any]]:
        """The conversation as chat messages; ``parts=True`` gives contents as
        ``[{"type": "text", "text": ...}]`` lists (what VLM processors' templates take)."""
        return [{"role": r, "content": [{"type": "text", "text": c}] if parts else c} for r, c in self]

    def __repr__(self) -> str:
        return f"Chat({self.messages()!r})"

    def __str__(self) -> str:
        return "\n".join(f"{r}: {c}" for r, c in self)


#: A prompt: one user turn as a string, or a conversation.
Prompt = Union[str, Chat]


def is_messages(x: Any) -> bool:
    """Whether ``x`` looks like a conversation: a non-empty list of mappings that all have a role."""
    return (isinstance(x, Sequence) and not isinstance(x, (str, bytes)) and len(x) > 0
            and all(isinstance(m, Mapping) and "role" in m for m in x))


def as_prompt(x: Any, where: str = "the prompt") -> Prompt:
    """One prompt: a string, a :class:`Chat`, or a list of chat messages (made a :class:`Chat`).

    Raises:
        InputError: anything else (None, a number, bytes, a dict, a nested list, ...), naming what was given.
    """
    if isinstance(x, Chat):
        return x
    if isinstance(x, str):
        return check_text(x, where)
    if is_messages(x):
        return Chat(x, where=where)
    hint = ("pass a prompt string, or a conversation as a list of chat messages "
            "[{'role': 'user', 'content': ...}]")
    if isinstance(x, (bytes, bytearray)):
        raise InputError(f"{where} is {type(x).__name__}, not text; decode it first (x.decode('utf-8')), or {hint}.")
    if isinstance(x, Mapping):
        if "prompt" in x:
            raise InputError(f"{where} is a dict with keys {sorted(map(str, x))}, not a prompt; convert records with "
                             "steerlib.ContrastiveItem.from_records(rows) (or steerlib.data.items_from_table), or "
                             f"{hint}.")
        raise InputError(f"{where} is a dict with keys {sorted(map(str, x))}, not a prompt; {hint}.")
    if isinstance(x, Sequence):
        raise InputError(f"{where} is a {type(x).__name__} of {', '.join(sorted({type(v).__name__ for v in x})) or 'nothing'}"
                         f", not a prompt; {hint} (several prompts go in one flat list).")
    raise InputError(f"{where} is {'None' if x is None else 'a ' + type(x).__name__}, not a prompt; {hint}.")


def as_prompts(prompts: Any) -> list[Prompt]:
    """A batch of prompts: one prompt (a string or one conversation) or a sequence of them.

    A list of chat-message dicts is one conversation (as ``pipeline("text-generation")`` reads it); a list of
    such lists, or of strings, is a batch.

    Raises:
        InputError: something that is not a prompt, or a table (DataFrame, ``datasets.Dataset``); the message
            says what was given and what to pass.
    """
    if isinstance(prompts, (str, Chat)) or is_messages(prompts):
        return [as_prompt(prompts)]
    if hasattr(prompts, "columns") or hasattr(prompts, "column_names"):
        raise InputError(f"Got a {type(prompts).__name__} as prompts: convert it first with "
                         "steerlib.data.items_from_table(table) (columns prompt, positive, negative, behavior), "
                         "or pass a list of prompt strings.")
    if prompts is None or isinstance(prompts, (bytes, bytearray, Mapping)) or not isinstance(prompts, Sequence):
        return [as_prompt(prompts, "The prompts")]  # raises, naming what was given
    return [as_prompt(p, f"Prompt {i}") for i, p in enumerate(prompts)]


def prompt_text(prompt: Prompt) -> str:
    """Plain text of a prompt for display and judges: the string, or the conversation's transcript."""
    return prompt if isinstance(prompt, str) else str(prompt)


def edit_last_user(prompt: Prompt, edit: Callable[[str], str]) -> Prompt:
    """``edit`` applied to the user's turn: the string, or a conversation's last (user) message."""
    if isinstance(prompt, str):
        return edit(prompt)
    return Chat([*prompt[:-1], ("user", edit(prompt.last_user))])
