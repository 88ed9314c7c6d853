"""Exact and near-duplicate reasoning, within a problem or across the whole run.

Exact: a hash of the whitespace-normalized reasoning. Near: datasketch MinHash over word shingles,
with LSH banding so a trace is compared only with the few earlier traces that share a band, not with
all of them. The first occurrence is kept; the filter object lives for the whole run, so traces are
compared across shards too.

Only traces still kept when dedup scores them become "first occurrences": put dedup after
`rejection` in the recipe, and a wrong sample never pushes out a right one that resembles it.
"""
from __future__ import annotations

import hashlib
import re
import zlib

from datasketch import MinHash, MinHashLSH

from distill.errors import ConfigError
from distill.filters.base import Filter, register_filter
from distill.warehouse.schema import Trace

NEAR_MAX = 0.999  # 1.0 means exact; an estimate of 1.0 for texts that differ is reported below it
_WORD = re.compile(r"\w+")


def shingles(text: str, k: int = 5) -> set[bytes]:
    """The lowercased word k-grams of a text (the whole text as one gram when it is shorter)."""
    words = _WORD.findall(text.lower())
    k = max(1, min(k, len(words)))
    return {" ".join(words[i:i + k]).encode() for i in range(max(1, len(words) - k + 1))}


def new_minhash(num_perm: int = 128, seed: int = 0) -> MinHash:
    """An empty MinHash with the settings every dedup stage uses (this filter and filters/global_dedup.py).

    crc32 (C, no Python wrapper) hashes a shingle several times faster than datasketch's default sha1;
    a plain checksum is enough because the affine32 scheme mixes every input hash (MurmurHash3's
    finalizer) before permuting it. Named, so a new datasketch default never changes stored scores.
    """
    return MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32, scheme="affine32")


def text_digest(text: str) -> bytes:
    """What makes two texts exact duplicates: the same words with any whitespace between them."""
    return hashlib.blake2b(" ".join(text.split()).encode(), digest_size=16).digest()


class _Index:
    """The first occurrences seen in one scope: exact hashes, and MinHashes in an LSH index."""

    def __init__(self, num_perm: int, bands: int):
        self.exact: set[bytes] = set()
        self.sigs: list[MinHash] = []
        self.lsh = MinHashLSH(num_perm=num_perm, params=(bands, num_perm // bands))

    def best(self, sig: MinHash) -> float:
        """Highest estimated Jaccard similarity to an indexed MinHash sharing at least one band."""
        return max((sig.jaccard(self.sigs[j]) for j in self.lsh.query(sig)), default=0.0)

    def add(self, digest: bytes, sig: MinHash) -> None:
        self.exact.add(digest)
        self.lsh.insert(len(self.sigs), sig, check_duplication=False)
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
        self.scope, self.threshold, self.num_perm, self.bands, self.shingle = scope, threshold, num_perm, bands, shingle
        self._empty = new_minhash(num_perm, seed)  # copied per trace: its permutations are made once
        self._indexes: dict[str, _Index] = {}
        self._first: dict[str, float] = {}  # trace_id -> score of each indexed trace: scoring twice is safe

    def score(self, trace: Trace) -> float:
        if trace.trace_id in self._first:
            return self._first[trace.trace_id]
        text = trace.reasoning or trace.completion or ""
        digest = text_digest(text)
        key = trace.problem_id if self.scope == "problem" else ""
        index = self._indexes.get(key) or self._indexes.setdefault(key, _Index(self.num_perm, self.bands))
        if digest in index.exact:
            return 1.0
        sig = self._empty.copy()
        sig.update_batch(shingles(text, self.shingle))
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
