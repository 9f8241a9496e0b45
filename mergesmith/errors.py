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


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the allocator running out of memory (Python's MemoryError, torch's CPU allocator), which
    is said as such rather than as a failure of the step that happened to allocate."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "not enough memory" in text or "Cannot allocate memory" in text
    )
