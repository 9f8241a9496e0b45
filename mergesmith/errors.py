"""The one exception type users see: its message is a single line saying what is wrong and how to fix it."""


class MergesmithError(Exception):
    """A problem with the user's input or environment. The CLI prints ``error: <message>`` and exits 2."""


class CheckpointError(MergesmithError):
    """A checkpoint that cannot be read safely: missing, corrupt, lying header, unsafe pickle."""


class ConfigError(MergesmithError):
    """A merge configuration that does not validate."""


# Characters that must never reach a terminal or a log line verbatim: controls (a newline forges a second line, an
# escape sequence rewrites the screen), invisible format characters (bidi overrides), surrogates, line separators.
UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def escape_unprintable(text: str) -> str:
    """``text`` with every unprintable character written as a Python escape (``\\n``, ``\\x1b``, ``\\u202e``)."""
    import unicodedata

    return "".join(ascii(ch)[1:-1] if unicodedata.category(ch) in UNPRINTABLE_CATEGORIES else ch for ch in text)
