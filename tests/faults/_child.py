"""Run the ``mergesmith`` CLI in a forked child process with a fault injected (see test_environment_faults).

Forked rather than started afresh: the test process has torch and mergesmith imported already, and a fresh
interpreter would spend seconds importing them again for every case.

MODE ``kill``: SIGKILL itself once VALUE tensors have been written (the progress hook runs after each write).
MODE ``pause``: after VALUE tensors, create the file ``VALUE2.paused`` and wait for ``VALUE2.resume``.
MODE ``fsize``: no file may grow beyond VALUE bytes (RLIMIT_FSIZE) and SIGXFSZ is ignored, so an oversized write
fails with EFBIG as on a full disk. MODE ``nocaps``: as root, drop the capabilities that let root ignore
permission bits (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so a read-only directory is read-only to this process too.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from pathlib import Path


def _after_tensors(n: int, action) -> None:
    from mergesmith import cli

    original = cli._ProgressBar.update
    seen = [0]

    def update(self, job):
        original(self, job)
        seen[0] += 1
        if seen[0] == n:
            action()

    cli._ProgressBar.update = update


def _drop_permission_override() -> None:
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    override = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    data[0].effective &= ~override
    data[0].permitted &= ~override
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def run(mode: str, value, args: list[str], stderr_path: str) -> None:
    """The child's body: install the fault, then run the CLI (whose SystemExit gives the exit code)."""
    sys.stdout = open(os.devnull, "w")
    sys.stderr = open(stderr_path, "w", buffering=1)
    if mode == "kill":
        _after_tensors(int(value), lambda: os.kill(os.getpid(), signal.SIGKILL))
    elif mode == "pause":
        signal_base = str(value[1])

        def pause() -> None:
            Path(signal_base + ".paused").touch()
            while not Path(signal_base + ".resume").exists():
                time.sleep(0.01)

        _after_tensors(int(value[0]), pause)
    elif mode == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(value), int(value)))
    elif mode == "nocaps":
        _drop_permission_override()
    elif mode != "plain":
        raise SystemExit(f"unknown mode {mode}")
    from mergesmith.cli import main as cli_main

    cli_main([str(a) for a in args], prog_name="mergesmith")
