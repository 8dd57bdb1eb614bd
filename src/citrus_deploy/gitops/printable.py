"""Text from a repository (file names, keys), made safe to print in a terminal or a CI log.

A file name can hold a newline or escape bytes: printed raw, a newline followed by `::error`
becomes a GitHub workflow command, and escape sequences rewrite the terminal. Everything but
printable ASCII is shown escaped.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """`text` with every character outside printable ASCII escaped (`\\n`, `\\x1b`, `\\u202e`).

    Idempotent: its output is printable ASCII, which it leaves alone, so text escaped once is
    never escaped twice. A byte of a name that is not UTF-8 (Python keeps it as a lone
    surrogate) shows as `\\xNN`.
    """
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if " " <= ch <= "~":
        return ch
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape of an undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
