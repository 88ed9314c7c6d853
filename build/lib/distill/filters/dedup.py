"""Exact and near-duplicate reasoning, within a problem or across the whole run.

Exact: a hash of the whitespace-normalized reasoning. Near: MinHash signatures over word shingles,
with LSH banding so a trace is compared only with the few earlier traces that share a band, not with
all of them. The first occurrence is kept; the filter object lives for the whole run, so traces are
compared across shards too.

Only traces still kept when dedup scores them become "first occurrences": put dedup after
`rejection` in the recipe, and a wrong sample never pushes out a right one that resembles it.
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict

import numpy as np

from distill.errors import ConfigError
from distill.filters.base import Filter, register_filter
from distill.warehouse.schema import Trace

NEAR_MAX = 0.999  # 1.0 means exact; an estimate of 1.0 for texts that differ is reported below it
_WORD = re.compile(r"\w+")
_MASK32 = np.uint64(0xFFFFFFFF)


def _h64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")


class MinHasher:
    """MinHash over word k-shingles with a fixed seed: the same text always gets the same signature."""

    def __init__(self, num_perm: int = 128, shingle: int = 5, seed: int = 0):
        rng = np.random.default_rng(seed)
        # h(x) = ((a*x + b) mod 2^64) >> 32 with odd a: multiply-shift hashing, one (a, b) per permutation
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
        for j in range(k):  # polynomial hash of each window of k word hashes (wraps mod 2^64)
            acc = acc * np.uint64(1_000_003) + h[j:j + m]
        return np.unique(acc)

    def signature(self, text: str) -> np.ndarray:
        x = self.shingles(text)
        sig = np.full(len(self.a), np.iinfo(np.uint32).max, dtype=np.uint32)
        for i in range(0, len(x), 4096):  # bounded memory for very long traces
            hv = (x[i:i + 4096, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)
            sig = np.minimum(sig, (hv & _MASK32).min(axis=0).astype(np.uint32))
        return sig


class _Index:
    """The first occurrences seen in one scope: exact hashes, signatures and LSH buckets."""

    def __init__(self, bands: int):
        self.exact: set[bytes] = set()
        self.sigs: list[np.ndarray] = []
        self.buckets: list[dict[bytes, list[int]]] = [defaultdict(list) for _ in range(bands)]

    def _keys(self, sig: np.ndarray):
        rows = len(sig) // len(self.buckets)
        return [sig[i * rows:(i + 1) * rows].tobytes() for i in range(len(self.buckets))]

    def best(self, sig: np.ndarray) -> float:
        """Highest estimated Jaccard similarity to an indexed signature sharing at least one band."""
        candidates = {j for band, key in zip(self.buckets, self._keys(sig)) for j in band.get(key, ())}
        return max((float(np.mean(self.sigs[j] == sig)) for j in candidates), default=0.0)

    def add(self, digest: bytes, sig: np.ndarray) -> None:
        self.exact.add(digest)
        for band, key in zip(self.buckets, self._keys(sig)):
            band[key].append(len(self.sigs))
        self.sigs.append(sig)


@register_filter("dedup")
class Dedup(Filter):
    """Score: highest similarity to an earlier kept trace in scope (0 unique, 1 exact, else MinHash Jaccard).

    Only traces that share an LSH band are compared, so a similarity well below the threshold may read 0.
    """

    def __init__(self, scope: str = "problem", threshold: float = 0.85, num_perm: int = 128, bands: int = 16,
                 shingle: int = 5, seed: int = 0):
        if scope not in ("problem", "dataset"):
            raise ConfigError(f"dedup filter: scope must be 'problem' or 'dataset', got {scope!r}")
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"dedup filter: threshold must be within (0, 1], got {threshold}")
        if bands < 1 or num_perm % bands:
            raise ConfigError(f"dedup filter: bands must divide num_perm, got bands={bands}, num_perm={num_perm}")
        # 16 bands of 8 rows: a pair at Jaccard 0.85 shares a band with probability 99.4%, a pair at
        # 0.5 with 6%, so almost all true near duplicates are found and few others are compared.
        self.scope, self.threshold, self.bands = scope, threshold, bands
        self.hasher = MinHasher(num_perm, shingle, seed)
        self._indexes: dict[str, _Index] = {}
        self._first: dict[str, float] = {}  # trace_id -> score of each indexed trace: scoring twice is safe

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
        s = min(index.best(sig), NEAR_MAX)
        # an earlier filter's reject is never anyone's first occurrence
        if s < self.threshold and trace.kept is not False:
            index.add(digest, sig)
            self._first[trace.trace_id] = s
        return s

    def keep(self, score: float) -> bool | tuple[bool, str]:
        if score >= 1.0:
            return False, "duplicate"
        return score < self.threshold or (False, "near_duplicate")

    report_counts = ("first_occurrences", "duplicate", "near_duplicate")

    def report(self, traces: list[Trace]) -> dict:
        """The batch's counts, from its scores: a shard scored twice (resumed) is not counted twice."""
        scores = [t.scores.get(self.name) for t in traces]
        return {"scope": self.scope, "threshold": self.threshold,
                "first_occurrences": sum(1 for t in traces if t.trace_id in self._first),
                "duplicate": sum(1 for s in scores if s is not None and s >= 1.0),
                "near_duplicate": sum(1 for s in scores if s is not None and self.threshold <= s < 1.0)}
