"""The CLI's error contract, shared by every command: one ``error:`` line (control characters escaped) and exit code
2 for bad input, a missing optional dependency (naming the extra that installs it) and out of memory; stop signals
(SIGINT, SIGTERM, SIGHUP) unwind like Ctrl-C, so staging directories and locks are removed, and exit with 128 + the
signal number; options and output paths checked before any work."""

from __future__ import annotations

import functools
import signal
import sys
import threading
from pathlib import Path

import click

# SIGTERM is what `timeout`, systemd and container runtimes send, SIGHUP what a closed terminal sends: both unwind
# like Ctrl-C, so staging directories and lock files are removed on the way out.
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_MEMORY_HINTS = {
    "merge": "merge fewer tensors at once: --threads 1 and a smaller --memory-budget (e.g. 1GB)",
    "continual_add_command": "free memory (a continual step holds three copies of the largest tensor)",
    "inspect": "inspect fewer experts at once, or pass --no-spectrum",
}


class _Stopped(BaseException):
    """A stop signal, raised in the main thread; a BaseException so no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame) -> None:
    for other in _STOP_SIGNALS + (signal.SIGINT,):
        signal.signal(other, signal.SIG_IGN)  # a second signal must not interrupt the clean-up
    raise _Stopped(signum)


def echo_line(text: str) -> None:
    """One line on stderr, with control characters escaped: a path holding a newline cannot forge a second line."""
    from mergesmith.errors import escape_unprintable

    click.echo(escape_unprintable(text), err=True)


def _command_path() -> str:
    """The running subcommand as typed after ``mergesmith`` (e.g. "bench", "continual add")."""
    ctx = click.get_current_context(silent=True)
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def user_errors(func):
    """Turn MergesmithError (and bad-input errors from pydantic/torch layers) into one line and exit code 2; an
    optional dependency that is not installed into one line naming its extra (``mergesmith.extras``) and exit code 2;
    stop signals (SIGINT, SIGTERM, SIGHUP) into one line and exit code 128 + the signal number, after the clean-up."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from mergesmith.errors import MergesmithError, is_out_of_memory

        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {signal.SIGINT: signal.getsignal(signal.SIGINT)}
            previous.update({sig: signal.signal(sig, _raise_stopped) for sig in _STOP_SIGNALS})
        try:
            return func(*args, **kwargs)
        except MergesmithError as exc:
            echo_line(f"error: {exc}")
            sys.exit(2)
        except ModuleNotFoundError as exc:
            from mergesmith.extras import missing_module_message

            message = missing_module_message(exc.name, _command_path() or func.__name__)
            if message is None:  # not an optional dependency: a broken installation, shown as it is
                raise
            echo_line(f"error: {message}")
            sys.exit(2)
        except KeyboardInterrupt:
            echo_line("error: interrupted; no output was written")
            sys.exit(128 + signal.SIGINT)
        except _Stopped as exc:
            echo_line(f"error: stopped by {signal.Signals(exc.signum).name}; no output was written")
            sys.exit(128 + exc.signum)
        except (MemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            hint = _MEMORY_HINTS.get(func.__name__, "free memory or use a machine with more")
            echo_line(f"error: out of memory ({type(exc).__name__}); {hint}; no output was written")
            sys.exit(2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    return wrapper


def size_option(value: str, option: str) -> int:
    """A byte size option (``--max-shard-size``, ``--memory-budget``): the one parser, at least one byte."""
    from mergesmith.io.sizes import parse_size

    return parse_size(value, what=option, minimum=1)


def pool_models(pool: Path | None) -> list[Path]:
    """The model directories a pool YAML names (none without a pool): an output must not overlap them."""
    if pool is None:
        return []
    from mergesmith.bench.pool_schema import pool_model_dirs

    return pool_model_dirs(pool)


def check_output_early(out_dir: Path, force: bool, inputs, **kwargs) -> None:
    """Refuse a bad output path before any work or progress bar (the same rule StagedOutput applies)."""
    from mergesmith.io.atomic import check_output

    check_output(out_dir, force=force, inputs=[Path(p) for p in inputs if Path(p).exists()], **kwargs)
