"""Decisions over the whole warehouse: global dedup and decontamination, over every sample of some runs at once.

The `dedup` and `decontam` filters decide shard by shard, in one process, in the order shards finish.
These stages see all the rows at once and return decisions (warehouse.schema.DECISIONS_SCHEMA), which
the warehouse stores apart from the parts and overlays in its views; nothing here reads or writes files.

Global dedup, as datatrove's staged MinHash dedup: exact duplicates share a hash of the
whitespace-normalized text; near duplicates are found by MinHash LSH (filters/dedup.py's shingles and
MinHash settings, 16 bands of 8 rows): two texts that share a band are a candidate pair, kept as an
edge when their estimated Jaccard similarity reaches the threshold; a cluster is a connected component
of the edges (union-find). Each cluster keeps its lowest (trace_id, run_id) and drops the others. Every
step is a function of the set of rows, never of their order, so two runs of a flow whose shards finished
in different orders get the same decisions.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from functools import partial
from multiprocessing import get_context

import numpy as np
import pyarrow as pa

from distill.errors import ConfigError
from distill.filters.decontam import Decontam
from distill.filters.dedup import NEAR_MAX, new_minhash, shingles, text_digest
from distill.warehouse.schema import DECISIONS_SCHEMA

DEDUP, DECONTAM = "global_dedup", "global_decontam"  # the stage names: `rejected_stage` and the decisions files
SCOPES = ("dataset", "problem")
CHUNK = 512  # texts per task of the signing pool: big enough that pickling the results is a small cost
# Fewer distinct texts than this are signed in this process: on 2 cores one process signs ~4,000 texts of
# 400 words a second, and a pool's start costs about as much (benchmarks/dedup.py --global).
PARALLEL_MIN = 4096

Row = tuple[str, str, str, "str | None"]  # run_id, trace_id, problem_id, text (reasoning, else completion)


def check_dedup(threshold: float = 0.85, scope: str = "dataset", num_perm: int = 128, bands: int = 16) -> None:
    if scope not in SCOPES:
        raise ConfigError(f"{DEDUP}: scope must be 'dataset' or 'problem', got {scope!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
        raise ConfigError(f"{DEDUP}: threshold must be a number within (0, 1], got {threshold!r}")
    if bands < 1 or num_perm % bands:
        raise ConfigError(f"{DEDUP}: bands must divide num_perm, got bands={bands}, num_perm={num_perm}")


def signatures(texts: list[str], num_perm: int = 128, shingle: int = 5, seed: int = 0, workers: int = 1) -> np.ndarray:
    """The MinHash of each text, one row each (uint32, num_perm columns).

    A pure function of each text, so the rows are the same however the work is split: with `workers` > 1
    and at least PARALLEL_MIN texts, chunks of them go to worker processes and come back in order. The
    workers come from a fork server (a fresh process that has imported this module once; forking the
    caller, which may hold a teacher engine's threads, can hang), so only the first pool pays the imports.
    """
    if workers > 1 and len(texts) >= PARALLEL_MIN:
        chunks = [texts[i:i + CHUNK] for i in range(0, len(texts), CHUNK)]
        ctx = get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=ctx) as pool:
            parts = list(pool.map(partial(_sign, num_perm=num_perm, shingle=shingle, seed=seed), chunks))
        return np.concatenate(parts)
    return _sign(texts, num_perm, shingle, seed)


def _sign(texts: list[str], num_perm: int, shingle: int, seed: int) -> np.ndarray:
    empty = new_minhash(num_perm, seed)
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    for i, text in enumerate(texts):
        m = empty.copy()
        m.update_batch(shingles(text, shingle))
        out[i] = m.hashvalues
    return out


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of signature rows (b may be many rows), as MinHash.jaccard computes it."""
    return np.count_nonzero(a == b, axis=-1) / a.shape[-1]


def components(sigs: np.ndarray, threshold: float, bands: int) -> list[int]:
    """For each signature, the lowest index of its cluster: signatures sharing an LSH band whose estimated
    Jaccard similarity is >= threshold are joined (union-find; a component is the same whatever the order
    the pairs are met in)."""
    n, num_perm = sigs.shape
    rows = num_perm // bands
    parent = list(range(n))

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    for b in range(bands):
        band = np.ascontiguousarray(sigs[:, b * rows:(b + 1) * rows])
        keys = band.view(np.dtype((np.void, band.dtype.itemsize * rows))).ravel()
        _, bucket, counts = np.unique(keys, return_inverse=True, return_counts=True)
        shared = counts[bucket] > 1  # only texts that share this band with another one are candidates
        if not shared.any():
            continue
        members = np.flatnonzero(shared)
        order = members[np.argsort(bucket[members], kind="stable")]  # by bucket, ascending index inside one
        edges = np.flatnonzero(np.diff(bucket[order])) + 1
        for group in np.split(order, edges):
            for pos in range(len(group) - 1):  # every candidate pair of the bucket, verified
                a, rest = group[pos], group[pos + 1:]
                for c in rest[similarity(sigs[a], sigs[rest]) >= threshold].tolist():
                    ra, rc = find(int(a)), find(c)
                    if ra != rc:
                        parent[max(ra, rc)] = min(ra, rc)  # the root is the lowest index
    return [find(i) for i in range(n)]


def global_dedup(rows: Iterable[Row], threshold: float = 0.85, scope: str = "dataset", workers: int = 1,
                 num_perm: int = 128, bands: int = 16, shingle: int = 5, seed: int = 0,
                 created_at: datetime | None = None) -> pa.Table:
    """One decision per (run_id, trace_id) of `rows`: kept, or dropped as a `duplicate` (the same text, but
    for whitespace, as the row its cluster keeps) or a `near_duplicate`.

    score: a dropped row's estimated similarity to the row its cluster keeps (1.0 for an exact copy; a
    near copy's estimate is capped at 0.999, and a row joined through another may read below the
    threshold); a kept row's is 0, so `score < t` re-decides at a stricter threshold t in SQL. detail:
    {"cluster": the kept trace_id, "run_id": its run} on every row of a cluster of two or more.
    `scope`: 'dataset' compares all rows, 'problem' only rows of the same problem_id. The same trace_id
    in two runs (a run that reused another's stored sample) is the same text: an exact duplicate.
    """
    check_dedup(threshold, scope, num_perm, bands)
    by_key: dict[tuple[str, str], tuple[str, str]] = {}
    for run_id, trace_id, problem_id, text in rows:
        value = (problem_id or "", text or "")
        key = (trace_id, run_id)
        by_key[key] = min(value, by_key.get(key, value))  # a key given twice: the same choice in any order
    keys = sorted(by_key)  # the canonical order: every choice below follows it, never the input's
    digests = [text_digest(by_key[k][1]) for k in keys]
    node_of: dict[bytes, int] = {}  # one signature per distinct text, first met in the canonical order
    texts: list[str] = []
    for k, d in zip(keys, digests):
        if d not in node_of:
            node_of[d] = len(texts)
            texts.append(by_key[k][1])
    sigs = signatures(texts, num_perm, shingle, seed, workers)
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(by_key[k][0] if scope == "problem" else "", []).append(i)

    kept, score, reason, detail = [True] * len(keys), [0.0] * len(keys), [None] * len(keys), [None] * len(keys)
    for rows_of_group in groups.values():  # rows in canonical order; groups never share a cluster
        nodes = sorted({node_of[digests[i]] for i in rows_of_group})
        local = {node: j for j, node in enumerate(nodes)}
        label = components(sigs[nodes], threshold, bands)
        clusters: dict[int, list[int]] = {}
        for i in rows_of_group:
            clusters.setdefault(label[local[node_of[digests[i]]]], []).append(i)
        for members in clusters.values():
            if len(members) < 2:
                continue
            first = members[0]  # the lowest (trace_id, run_id)
            info = json.dumps({"cluster": keys[first][0], "run_id": keys[first][1]})
            for i in members:
                detail[i] = info
                if i == first:
                    continue
                kept[i] = False
                if digests[i] == digests[first]:
                    score[i], reason[i] = 1.0, "duplicate"
                else:
                    s = float(similarity(sigs[node_of[digests[i]]], sigs[node_of[digests[first]]]))
                    score[i], reason[i] = min(s, NEAR_MAX), "near_duplicate"
    return _table(keys, DEDUP, score, kept, reason, detail, created_at)


def global_decontam(rows: Iterable[Row], against: list, n: int = 13, max_share: float = 0.0,
                    created_at: datetime | None = None) -> pa.Table:
    """One decision per (run_id, trace_id) of `rows`, whose text is the problem (the prompt's last user
    message, as the decontam filter reads it): every sample of a problem whose words overlap an eval set
    by more than `max_share` is dropped as `contaminated`. score: the share of the problem's words covered
    by eval n-grams (null: no problem text); detail: {"eval_set", "eval_line"} of the first match, if any.
    `against`, `n`, `max_share`: as the decontam filter takes them."""
    decontam = Decontam(against=against, n=n, max_share=max_share)
    by_key: dict[tuple[str, str], str | None] = {}
    for run_id, trace_id, _problem_id, text in rows:
        by_key[(trace_id, run_id)] = text
    keys = sorted(by_key)
    found: dict[str, tuple[float, dict | None]] = {}  # each distinct problem text is checked once
    score, kept, reason, detail = [], [], [], []
    for k in keys:
        text = by_key[k]
        if text is None:
            share, where = None, None
        else:
            if text not in found:
                found[text] = decontam.overlap(text)
            share, where = found[text]
        ok = share is None or share <= max_share
        score.append(share)
        kept.append(ok)
        reason.append(None if ok else "contaminated")
        detail.append(None if where is None else json.dumps(where))
    return _table(keys, DECONTAM, score, kept, reason, detail, created_at)


def _table(keys: list[tuple[str, str]], stage: str, score: list, kept: list, reason: list, detail: list,
           created_at: datetime | None) -> pa.Table:
    at = created_at or datetime.now(timezone.utc)
    return pa.Table.from_pydict(
        {"run_id": [k[1] for k in keys], "trace_id": [k[0] for k in keys], "stage": [stage] * len(keys),
         "score": score, "kept": kept, "rejected_by": reason, "detail": detail, "created_at": [at] * len(keys)},
        schema=DECISIONS_SCHEMA)
