"""The one exception a user's mistake raises.

The CLI catches :class:`VaelabError`, prints its message (one sentence that names the file or
flag and what was expected) and exits with status 2, without a traceback. Everything else is a
bug and keeps its traceback.
"""
import unicodedata


class VaelabError(Exception):
    """Bad input from the user: a flag, a file, a shape. The message is shown as is, on one line:
    a character that would not print there (a newline in a file's name, a terminal's escape
    code in a value read from a file) is written as its escape."""

    def __init__(self, message: str = "", *args):
        super().__init__(printable(str(message)), *args)


def printable(text: str) -> str:
    """``text`` with each character that would break or hide part of a line (a control character
    such as a newline or a terminal's escape, a format character such as a direction override, a
    line or paragraph separator, a lone surrogate of an undecodable file name) written as its
    Python escape (``\\n``, ``\\x1b``), so that what a file names cannot break a message in two;
    letters and spaces of every script stay as they are."""
    if text.isprintable():
        return text
    return "".join(c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")
                   else c for c in text)


# A user's value can be anything a file holds (100 MB of it); a message shows its start only.
QUOTE_LIMIT = 200


def clip(text, limit: int = QUOTE_LIMIT) -> str:
    """``text`` as it is (a path, a name) for a message, or its start when longer than ``limit``."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for a message, or the repr of its start when longer than ``limit``."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    return clip(repr(value), limit)


def did_you_mean(word, options) -> str:
    """' (did you mean 'x'?)', naming the option closest to a mistyped ``word`` (a flag bare:
    ``--latent-dim``), else ''."""
    import difflib
    if not isinstance(word, str) or len(word) > QUOTE_LIMIT:  # no typo of a name is that long
        return ""
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {close[0] if close[0].startswith('-') else repr(close[0])}?)"
