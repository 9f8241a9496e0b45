"""What the libraries print while a long command (adapt, bench) runs, turned into mergesmith's own lines."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import click


@contextlib.contextmanager
def library_output():
    """What the libraries print while adapt and bench run. transformers' load reports and weight-loading bars are
    about mergesmith's own loads (a base model read as an encoder reports its unused head) and are not shown; a Python
    warning becomes one line on stderr, once per message (``note:`` for mergesmith's own, ``warning:`` for the
    libraries'), instead of a ``file:line: UserWarning`` dump."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    package = str(Path(__file__).resolve().parents[1])  # the mergesmith package
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        if text not in shown:
            shown.add(text)
            ours = issubclass(category, UserWarning) and str(Path(filename).resolve()).startswith(package)
            click.echo(f"{'note' if ours else 'warning'}: {text}", err=True)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
