"""One error type for everything a user can get wrong or a run can fail at.

Every stage raises `DistillError` (or a subclass a caller needs to tell apart) with a message that says
what was expected; the CLI catches this one type in one place (`distill.flows.cli.main`), prints the
message on one line and exits with `exit_code`: 2 for bad input, 3 for a run that finished only in part.
Any other exception is a bug in distill and keeps its traceback.
"""
from __future__ import annotations


class DistillError(Exception):
    """A mistake a user can make (a bad recipe, a missing file, an unknown run) or a run that can't go on."""

    exit_code = 2


class ConfigError(DistillError, ValueError):
    """A recipe, training or pipeline config, or a --set, that cannot run: unknown key, bad value, missing file."""


class BackendError(DistillError):
    """The teacher cannot be reached or refuses: a dead server, a bad key, an unknown model or backend."""


class PartialRunError(DistillError):
    """The run finished, but some samples failed; the finished ones are stored and a rerun makes only the rest."""

    exit_code = 3
