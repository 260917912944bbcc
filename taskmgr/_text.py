"""Text from outside, made safe to print or log: control characters escaped, length bounded.

A task's name, a graph's name or a request's path may hold control
characters (C0, DEL, C1): written raw to a terminal they move the cursor,
set its title or clear the screen; written raw to a log they forge lines.
:func:`printable` writes each one as a Python-style escape (``\\x1b``,
``\\u202e``), and the bidirectional overrides and line separators too, which
make a terminal show text other than what is there.
"""

from __future__ import annotations

import re

__all__ = ["CONTROL", "printable"]

#: C0 controls, DEL and C1 controls: what the REST API refuses in names, graphs and graphspaces
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# what is escaped when printed: the controls, and the characters that reorder or break a line
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    c = ord(match.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with every control character escaped, cut to ``limit`` characters (then ending
    with ``…`` and the length it had)."""
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}\u2026({len(text)} chars)"
    if text.isascii() and text.isprintable():
        return text
    return _UNSAFE.sub(_escape, text)
