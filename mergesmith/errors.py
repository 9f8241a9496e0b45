"""The one exception type users see: its message is a single line saying what is wrong and how to fix it."""


class MergesmithError(Exception):
    """A problem with the user's input or environment. The CLI prints ``error: <message>`` and exits 2."""


class CheckpointError(MergesmithError):
    """A checkpoint that cannot be read safely: missing, corrupt, lying header, unsafe pickle."""


class ConfigError(MergesmithError):
    """A merge configuration that does not validate."""
