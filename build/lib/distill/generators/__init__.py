"""Teacher backends: one file each (vllm.py, openai.py, transformers.py), one `Teacher` subclass each,
registered by name (`@register_teacher`); an unknown name fails with the known ones.

Also the per-process teacher cache: an engine holds a model on a device, so the shards a process
runs (threads of one flow, the generation flow then the journey builder) share one engine per teacher
configuration instead of loading a second copy; `release_teachers` frees them (before training).
"""
from __future__ import annotations

import importlib.util
import threading
import time

from distill.errors import BackendError
from distill.generators.base import TEACHERS, Teacher, register_teacher
from distill.generators import openai, transformers, vllm  # noqa: F401  (registers them; engines load lazily)

__all__ = ["TEACHERS", "Teacher", "register_teacher", "pick_backend", "make_teacher", "teacher_for",
           "teacher_key", "release_teachers"]


def pick_backend(name: str) -> str:
    """`auto` is vLLM when it is installed, else transformers."""
    if name == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    if name not in TEACHERS:
        raise BackendError(f"unknown backend {name!r} (known: auto, {', '.join(TEACHERS)})")
    return name


def make_teacher(backend: str, model: str, **options) -> Teacher:
    """A backend's engine for `model` (a local path for local backends), with its own keyword options."""
    return TEACHERS[pick_backend(backend)](model, **options)


_TEACHERS: dict[str, tuple[Teacher, threading.Lock]] = {}
_LOCK = threading.Lock()


def teacher_key(backend: str, settings: dict) -> str:
    """Which cached engine serves these settings: the model and the options its backend takes."""
    cls = TEACHERS[pick_backend(backend)]
    return repr([cls.name, settings["model"], *(settings.get(k) for k in cls.options)])


def teacher_for(backend: str, settings: dict, timings: dict | None = None) -> tuple[Teacher, threading.Lock]:
    """This process's engine for a recipe's teacher settings, built on first use (its load time goes to
    timings["model_load"]), with the lock that makes its callers take turns."""
    key = teacher_key(backend, settings)
    with _LOCK:
        if key not in _TEACHERS:
            t0 = time.perf_counter()
            _TEACHERS[key] = (TEACHERS[pick_backend(backend)].from_settings(settings), threading.Lock())
            if timings is not None:
                timings["model_load"] = time.perf_counter() - t0
        return _TEACHERS[key]


def release_teachers() -> None:
    """Stop this process's teacher engines (before training or evaluating other models here)."""
    with _LOCK:
        teachers = [t for t, _ in _TEACHERS.values()]
        _TEACHERS.clear()
    for t in teachers:
        t.close()
