"""Verifiers: plain functions `(completion, reference) -> Verdict`, registered in one dict.

`correct` is True, False, or None when the sample could not be checked (e.g. a gold answer that
does not parse): None is never counted as wrong.
"""
from __future__ import annotations

import ast
import importlib
import json
import multiprocessing.util
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context

from distill.errors import ConfigError


@dataclass(slots=True, frozen=True)
class Verdict:
    correct: bool | None
    reason: str
    extracted: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")


def boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every complete top-level `\\boxed{}`/`\\fbox{}`, braces balanced."""
    found, pos = [], 0
    while m := _BOX_OPEN.search(text, pos):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth:  # cut off mid-box (truncated output): not an answer
            break
        found.append((m.start(), i, text[m.end():i - 1].strip()))
        pos = i  # a box nested in this one is part of its content, not a second answer
    return found


def structured(reference: str):
    """The object or list a reference holds, or None when it is plain text.

    JSON is the stored form. A Python literal (`{'tests': ...}`) is read too: that is what `str()` made
    of a nested answer before the problem loader kept them as JSON, and it is in warehouses already.
    """
    text = reference.strip()
    if not text.startswith(("{", "[")):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    return data if isinstance(data, (dict, list)) else None


# name -> "module:function"; imported lazily so a verifier's heavy imports cost only its users.
VERIFIERS = {
    "math": "distill.verifiers.math:verify",
    "code": "distill.verifiers.code:verify",
    "countdown": "distill.verifiers.countdown:verify",
    "format": "distill.verifiers.format:verify",
    "judge": "distill.verifiers.judge:verify",  # no rules: the answer the judge is shown (flows/judge.py asks it)
}


def get_verifier(name: str):
    from distill.verifiers.judge import split_verifier

    rules, _ = split_verifier(name)  # NAME+judge: NAME's rules here; the judge is asked apart (flows/judge.py)
    name = rules or "judge"
    if name not in VERIFIERS:
        raise ConfigError(f"unknown verifier {name!r} (known: {', '.join(sorted(VERIFIERS))}, or NAME+judge)")
    module, func = VERIFIERS[name].split(":")
    return getattr(importlib.import_module(module), func)


def _verify_chunk(name: str, pairs: list[tuple[str, str]]) -> list[Verdict]:
    fn = get_verifier(name)
    return [fn(c, r) for c, r in pairs]


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    """One pool per size for the life of the process: a run verifies many shards, and starting
    spawned workers (each importing sympy) costs about a second."""
    if workers not in _POOLS:
        if not _POOLS:
            # Shut the pools down when this process exits, before multiprocessing joins its children
            # (and before the pools' own queue finalizers, priority 10, stop their feeder threads). In
            # a multiprocessing child such as a Dask worker that join comes before concurrent.futures'
            # exit hook: idle pool workers would wait for work forever, Dask's nanny would kill the
            # worker after 4 s and the pool workers would be left orphaned, for good.
            multiprocessing.util.Finalize(None, _shutdown_pools, exitpriority=100)
        _POOLS[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    return _POOLS[workers]


def _shutdown_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=True, cancel_futures=True)
    _POOLS.clear()


def verify_batch(name: str, pairs: list[tuple[str, str]], workers: int = 2, chunk: int = 64) -> list[Verdict]:
    """Verify many (completion, reference) pairs.

    math-verify's timeouts use SIGALRM, which only works in a main thread. In the main thread a
    small batch is checked inline; anywhere else, or for a large batch, it goes to worker processes
    (spawned: forking a process that holds torch threads or an engine can hang), where each worker
    runs in its own main thread with timeouts on. Verification is never skipped.
    """
    get_verifier(name)  # unknown names fail here, in the caller
    if not pairs:
        return []
    if threading.current_thread() is threading.main_thread() and len(pairs) <= chunk:
        return _verify_chunk(name, pairs)
    chunks = [pairs[i:i + chunk] for i in range(0, len(pairs), chunk)]
    pool = _pool(max(1, workers))
    return [v for part in pool.map(_verify_chunk, [name] * len(chunks), chunks) for v in part]
