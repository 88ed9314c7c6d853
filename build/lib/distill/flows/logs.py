"""Engine logs go to a file; the terminal keeps the progress bar, the results and errors.

vLLM's engine core and workers, Prefect's temporary server and multiprocessing's resource tracker are
separate processes that write to the file descriptors they inherit, and C++ code (NUMA binding, oneDNN)
writes to fd 2 directly, so logging settings cannot quiet them: file descriptors 1 and 2 are pointed at
the log file before any of them starts, and distill's own output is written to copies of the terminal's.
The descriptors stay redirected until the process ends, so warnings printed at exit (a leaked shared-memory
segment, an engine shut down) land in the file too.
"""
from __future__ import annotations

import os
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

_terminal: dict[str, TextIO] = {}


def terminal(name: str = "stderr") -> TextIO:
    """The terminal's stream: the real one after `to_log_file`, else sys.stdout / sys.stderr."""
    return _terminal.get(name) or getattr(sys, name)


def to_log_file(path: Path, consoles: dict[str, object], command: str = "") -> Path:
    """Point fds 1 and 2 (and so every child process started from now on) at `path`, appended to; the rich
    consoles in `consoles` ({"stdout": console, "stderr": console}) keep writing to the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    for name, fd in (("stdout", 1), ("stderr", 2)):
        if name not in _terminal:
            _terminal[name] = os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")
    log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    log.write(f"--- {datetime.now(timezone.utc).isoformat(timespec='seconds')} {command}\n")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    log.close()
    for name, console in consoles.items():
        console.file = _terminal[name]

    def excepthook(kind, value, tb):
        # The traceback goes to the log; the terminal gets one line that says where it is.
        traceback.print_exception(kind, value, tb, file=sys.stderr)
        sys.stderr.flush()
        print(f"error: {kind.__name__}: {value} (traceback in {path})", file=_terminal["stderr"])

    sys.excepthook = excepthook
    return path
