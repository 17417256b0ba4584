"""Text hygiene for names people give and for what the CLI prints (issue 25): control characters never reach a
terminal or a stored name.

* :func:`clean_label` — a name a person gives (run, dataset, tag …): control characters (C0, C1, DEL) and Unicode
  format characters that reorder text (bidi overrides) are dropped, whitespace collapsed.
* :func:`terminal_safe` — any text on its way to a terminal: the same characters shown as escapes (``\\x1b``), so an
  ANSI sequence stored before names were cleaned prints as text instead of moving the cursor or recolouring it.
"""
from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_ALL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean_label(text) -> str:
    """A name as stored: no control or bidi characters, single spaces, trimmed."""
    return " ".join(_CONTROL_ALL.sub(" ", str(text if text is not None else "")).split())


def _escape(match: re.Match) -> str:
    ch = match.group(0)
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str) -> str:
    """``text`` with every control character except newline, tab and carriage return shown as an escape."""
    return _CONTROL.sub(_escape, text)


class TerminalSafeWriter:
    """A stream wrapper whose writes pass through :func:`terminal_safe` (the CLI's stdout and stderr)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(terminal_safe(text))

    def __getattr__(self, name):
        return getattr(self._stream, name)


# ---- the CLI's output (core/__main__.py and every core/*/cli.py) -------------------------------------------------
def print_json(obj, *, sort_keys: bool = False) -> None:
    """A command's ``--json`` output: indented, non-ASCII text as itself, anything else (dates, paths) as its str."""
    import json

    print(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=sort_keys, default=str))


def fail(msg) -> int:
    """Bad input: one line on stderr (``error: <why>``, white space folded) and the exit status 2 (README)."""
    import sys

    print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2
