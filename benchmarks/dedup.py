"""Near-duplicate detection: `filters/dedup.py` against the hand-written MinHash + LSH it replaced.

    .venv/bin/python benchmarks/dedup.py [--traces 4000] [--per-problem 8] [--scope problem]

Synthetic long-CoT-shaped traces (200–600 words of reasoning from a 2,000-word vocabulary with
numbers) in groups of `--per-problem` samples per problem. Planted in each group: exact copies of an
earlier sample (whitespace changed) and near copies (1–6 words replaced, true Jaccard on 5-word
shingles about 0.75–0.97). Both implementations score the same traces, in shards of one problem
group, through `apply_filters` as a run does, `--repeat` times alternated. Prints traces/s of each
(its fastest run) and the ratio; which traces each flags (both, only one); and, against the true Jaccard similarity of the shingle sets, recall on the
planted near duplicates at or above the threshold and the traces flagged below it.

    .venv/bin/python benchmarks/dedup.py --global [--traces 4000] [--reuse 0.1] [--workers 2]

Global dedup (filters/global_dedup.py, what `distill dedup` runs) on the same traces as one run's kept
samples, plus a share `--reuse` of them again in a second run under the same trace_id (a run that reused
stored samples), scope dataset, against datasketch used plainly in one process: a MinHash of every row,
MinHashLSH with the same 16 bands (insert all, query each), candidates verified at the threshold, clusters
by union-find, each keeping its lowest (trace_id, run_id). Prints samples/s of each (its fastest of
`--repeat` alternated runs) and the ratio, and whether the two give the same clusters and keep the same rows.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import re
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from distill.filters import apply_filters, make_filter  # noqa: E402
from distill.filters.base import Filter  # noqa: E402
from distill.warehouse.schema import Trace  # noqa: E402

# --- baseline: the hand-written MinHash + LSH that filters/dedup.py held before datasketch ----------
_WORD = re.compile(r"\w+")
_MASK32 = np.uint64(0xFFFFFFFF)


def _h64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")


class MinHasher:
    def __init__(self, num_perm: int = 128, shingle: int = 5, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self.shingle = shingle

    def shingles(self, text: str) -> np.ndarray:
        words = _WORD.findall(text.lower())
        ids = {w: _h64(w) for w in set(words)}
        h = np.array([ids[w] for w in words] or [0], dtype=np.uint64)
        k = min(self.shingle, len(h))
        m = len(h) - k + 1
        acc = np.zeros(m, dtype=np.uint64)
        for j in range(k):
            acc = acc * np.uint64(1_000_003) + h[j:j + m]
        return np.unique(acc)

    def signature(self, text: str) -> np.ndarray:
        x = self.shingles(text)
        sig = np.full(len(self.a), np.iinfo(np.uint32).max, dtype=np.uint32)
        for i in range(0, len(x), 4096):
            hv = (x[i:i + 4096, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)
            sig = np.minimum(sig, (hv & _MASK32).min(axis=0).astype(np.uint32))
        return sig


class _Index:
    def __init__(self, bands: int):
        self.exact: set[bytes] = set()
        self.sigs: list[np.ndarray] = []
        self.buckets: list[dict[bytes, list[int]]] = [defaultdict(list) for _ in range(bands)]

    def _keys(self, sig: np.ndarray):
        rows = len(sig) // len(self.buckets)
        return [sig[i * rows:(i + 1) * rows].tobytes() for i in range(len(self.buckets))]

    def best(self, sig: np.ndarray) -> float:
        candidates = {j for band, key in zip(self.buckets, self._keys(sig)) for j in band.get(key, ())}
        return max((float(np.mean(self.sigs[j] == sig)) for j in candidates), default=0.0)

    def add(self, digest: bytes, sig: np.ndarray) -> None:
        self.exact.add(digest)
        for band, key in zip(self.buckets, self._keys(sig)):
            band[key].append(len(self.sigs))
        self.sigs.append(sig)


class BaselineDedup(Filter):
    name = "dedup"  # not registered: the registry's "dedup" stays the real one

    def __init__(self, scope: str = "problem", threshold: float = 0.85, num_perm: int = 128, bands: int = 16,
                 shingle: int = 5, seed: int = 0):
        self.scope, self.threshold, self.bands = scope, threshold, bands
        self.hasher = MinHasher(num_perm, shingle, seed)
        self._indexes: dict[str, _Index] = {}
        self._first: dict[str, float] = {}

    def score(self, trace: Trace) -> float:
        if trace.trace_id in self._first:
            return self._first[trace.trace_id]
        text = trace.reasoning or trace.completion or ""
        digest = hashlib.blake2b(" ".join(text.split()).encode(), digest_size=16).digest()
        key = trace.problem_id if self.scope == "problem" else ""
        index = self._indexes.get(key) or self._indexes.setdefault(key, _Index(self.bands))
        if digest in index.exact:
            return 1.0
        sig = self.hasher.signature(text)
        s = min(index.best(sig), 0.999)
        if s < self.threshold and trace.kept is not False:
            index.add(digest, sig)
            self._first[trace.trace_id] = s
        return s

    def keep(self, score: float) -> bool | tuple[bool, str]:
        if score >= 1.0:
            return False, "duplicate"
        return score < self.threshold or (False, "near_duplicate")
# --- end of baseline ---------------------------------------------------------------------------------


def make_traces(n: int, per_problem: int, seed: int = 0) -> tuple[list[Trace], dict[str, str]]:
    """Traces, and the planted copies: copy trace_id -> "exact" or "near"."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(2000)] + [str(i) for i in range(200)]
    traces, planted = [], {}
    for i in range(n):
        pid, j = f"p{i // per_problem}", i % per_problem
        earlier = traces[i - j:i]
        roll = rng.random()
        if earlier and roll < 0.05:
            words = rng.choice(earlier).reasoning.split()
            reasoning = "  ".join(words)  # an exact copy, but for whitespace
            planted[str(i)] = "exact"
        elif earlier and roll < 0.25:
            words = rng.choice(earlier).reasoning.split()
            for _ in range(rng.randint(1, 6)):
                words[rng.randrange(len(words))] = rng.choice(vocab)
            reasoning = " ".join(words)
            planted[str(i)] = "near"
        else:
            reasoning = " ".join(rng.choice(vocab) for _ in range(rng.randint(200, 600)))
        traces.append(Trace(trace_id=str(i), run_id="bench", problem_id=pid, sample_index=j, source="bench",
                            domain="math", prompt=[{"role": "user", "content": "q"}], reference="1", teacher="m",
                            backend="b", sampling="{}", completion=f"<think>{reasoning}</think> \\boxed{{1}}",
                            reasoning=reasoning, answer="\\boxed{1}", finish_reason="stop"))
    return traces, planted


def shingle_set(text: str, k: int = 5) -> set[str]:
    words = _WORD.findall(text.lower())
    return {" ".join(words[i:i + k]) for i in range(max(1, len(words) - k + 1))}


def true_best(traces: list[Trace], scope: str) -> dict[str, float]:
    """Exact Jaccard to the most similar earlier first occurrence (per problem only: all pairs stay cheap)."""
    best, firsts = {}, defaultdict(list)
    for t in traces:
        s = shingle_set(t.reasoning)
        b = max((len(s & f) / len(s | f) for f in firsts[t.problem_id]), default=0.0)
        best[t.trace_id] = b
        if b < 0.85:  # what the filter indexes, with exact truth in place of the estimate
            firsts[t.problem_id].append(s)
    return best


def run(f: Filter, traces: list[Trace], per_problem: int) -> tuple[float, dict[str, float]]:
    traces = copy.deepcopy(traces)  # each implementation scores fresh traces
    shards = [traces[i:i + per_problem] for i in range(0, len(traces), per_problem)]  # one per problem, as a run's
    t0 = time.perf_counter()
    for shard in shards:
        apply_filters(shard, [f])
    return time.perf_counter() - t0, {t.trace_id: t.scores["dedup"] for t in traces}


def plain_datasketch(rows: list[tuple[str, str, str, str]], threshold: float) -> dict[tuple[str, str], tuple[str, str]]:
    """The baseline of --global: {(trace_id, run_id): the (trace_id, run_id) its cluster keeps}."""
    from datasketch import MinHashLSH

    from distill.filters.dedup import new_minhash, shingles

    keys = sorted((trace_id, run_id) for run_id, trace_id, _, _ in rows)
    text = {(trace_id, run_id): t for run_id, trace_id, _, t in rows}
    empty = new_minhash()
    sigs = []
    for k in keys:
        m = empty.copy()
        m.update_batch(shingles(text[k]))
        sigs.append(m)
    lsh = MinHashLSH(num_perm=128, params=(16, 8))
    for i, m in enumerate(sigs):
        lsh.insert(i, m, check_duplication=False)
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, m in enumerate(sigs):
        for j in lsh.query(m):
            if j > i and m.jaccard(sigs[j]) >= threshold:
                a, b = find(i), find(j)
                parent[max(a, b)] = min(a, b)
    return {k: keys[find(i)] for i, k in enumerate(keys)}


def main_global(args) -> None:
    from distill.filters.global_dedup import global_dedup

    traces, planted = make_traces(args.traces, args.per_problem)
    rows = [("bench", t.trace_id, t.problem_id, t.reasoning) for t in traces]
    rng = random.Random(1)
    rows += [("bench-2", t.trace_id, t.problem_id, t.reasoning) for t in rng.sample(traces, int(len(traces) * args.reuse))]
    thr = args.threshold
    runs = {"datasketch MinHashLSH, one process (baseline)": lambda: plain_datasketch(rows, thr),
            "global_dedup, workers 1": lambda: global_dedup(rows, threshold=thr, workers=1),
            f"global_dedup, workers {args.workers}": lambda: global_dedup(rows, threshold=thr, workers=args.workers)}
    global_dedup(rows[:100], threshold=thr)  # imports and first calls are not throughput
    plain_datasketch(rows[:100], thr)
    best: dict[str, float] = {}
    out: dict[str, object] = {}
    for _ in range(args.repeat):  # alternated, and the fastest run kept: the machine is shared
        for name, call in runs.items():
            t0 = time.perf_counter()
            out[name] = call()
            best[name] = min(time.perf_counter() - t0, best.get(name, float("inf")))
    words = sum(len(t.reasoning.split()) for t in traces) / len(traces)
    near = sum(1 for v in planted.values() if v == "near")
    print(f"{len(rows)} samples ({len(traces)} in one run, {len(rows) - len(traces)} of them again in a second; "
          f"{words:.0f} words each on average), scope dataset, threshold {thr}; planted {len(planted) - near} "
          f"exact and {near} near copies; {os.cpu_count()} cores")
    base_name = next(iter(runs))
    for name in runs:
        print(f"  {name:48s} {len(rows) / best[name]:8,.0f} samples/s   {best[base_name] / best[name]:.2f}x")
    base = out[base_name]

    def clusters(kept_by: dict) -> set[frozenset]:
        members = defaultdict(set)
        for k, root in kept_by.items():
            members[root].add(k)
        return {frozenset(m) for m in members.values()}

    for name in list(runs)[1:]:
        table = out[name].to_pylist()
        kept_by = {}
        for r in table:
            cluster = json.loads(r["detail"]) if r["detail"] else {"cluster": r["trace_id"], "run_id": r["run_id"]}
            kept_by[(r["trace_id"], r["run_id"])] = (cluster["cluster"], cluster["run_id"])
        same_kept = {k for k, v in kept_by.items() if k == v} == {k for k, v in base.items() if k == v}
        print(f"  {name:48s} same clusters as the baseline: {clusters(kept_by) == clusters(base)}; same rows kept: "
              f"{same_kept}; {sum(1 for r in table if r['kept'])} kept, "
              f"{sum(1 for r in table if r['rejected_by'] == 'duplicate')} duplicate, "
              f"{sum(1 for r in table if r['rejected_by'] == 'near_duplicate')} near_duplicate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=4000)
    ap.add_argument("--per-problem", type=int, default=8)
    ap.add_argument("--scope", choices=["problem", "dataset"], default="problem")
    ap.add_argument("--threshold", type=float, default=0.85)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, alternated; the fastest counts")
    ap.add_argument("--global", dest="global_", action="store_true",
                    help="global dedup (filters/global_dedup.py) against plain datasketch MinHashLSH")
    ap.add_argument("--reuse", type=float, default=0.1, help="--global: share of samples in a second run too")
    ap.add_argument("--workers", type=int, default=2, help="--global: processes computing signatures (the pool "
                    "starts at 4,096 distinct texts)")
    args = ap.parse_args()
    if args.global_:
        main_global(args)
        return
    traces, planted = make_traces(args.traces, args.per_problem)
    thr = args.threshold

    makers = {"baseline (hand-written)": lambda: BaselineDedup(scope=args.scope, threshold=thr),
              "filters/dedup.py": lambda: make_filter("dedup", scope=args.scope, threshold=thr)}
    results = {}
    for make in makers.values():
        run(make(), traces[:2 * args.per_problem], args.per_problem)  # imports and first calls are not throughput
    for _ in range(args.repeat):  # alternated, and the fastest run kept: the machine is shared
        for name, make in makers.items():
            s, scores = run(make(), traces, args.per_problem)
            results[name] = (min(s, results.get(name, (s,))[0]), scores)

    words = sum(len(t.reasoning.split()) for t in traces) / len(traces)
    near = sum(1 for v in planted.values() if v == "near")
    print(f"{len(traces)} traces ({words:.0f} words each on average), {args.per_problem} per problem, "
          f"scope {args.scope}, threshold {thr}; planted {len(planted) - near} exact and {near} near copies")
    (base_name, (base_s, base_scores)), (new_name, (new_s, new_scores)) = results.items()
    for name, (s, _) in results.items():
        print(f"  {name:26s} {len(traces) / s:8,.0f} traces/s   {base_s / s:.2f}x")

    flagged = {name: {k for k, v in scores.items() if v >= thr} for name, (_, scores) in results.items()}
    a, b = flagged[base_name], flagged[new_name]
    print(f"flagged (score >= {thr}): {len(a & b)} by both, {len(a - b)} by the baseline only, "
          f"{len(b - a)} by filters/dedup.py only; exact duplicates (score 1.0): "
          f"{sum(v == 1.0 for v in base_scores.values())} and {sum(v == 1.0 for v in new_scores.values())} "
          "(a copy of a near copy is exact where that near copy was missed and so indexed)")
    if args.scope == "problem":
        truth = true_best(traces, args.scope)
        should = {k for k, v in planted.items() if v == "near" and 0.999 > truth[k] >= thr}
        for name, (_, scores) in results.items():
            found = should & flagged[name]
            below = [k for k in flagged[name] if truth[k] < thr]
            err = np.mean([abs(scores[k] - truth[k]) for k in scores if 0 < truth[k] < 1 and scores[k] > 0])
            print(f"  {name:26s} recall on the {len(should)} planted near copies with true Jaccard >= {thr}: "
                  f"{len(found) / max(1, len(should)):.3f}; flagged below it: {len(below)} "
                  f"(true Jaccard {min((truth[k] for k in below), default=float('nan')):.3f} at lowest); "
                  f"mean |estimate - true Jaccard| {err:.3f}")


if __name__ == "__main__":
    main()
