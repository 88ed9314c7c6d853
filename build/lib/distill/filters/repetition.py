"""Looping chains of thought: a reasoning that repeats its own earlier text word for word."""
from __future__ import annotations

from distill.errors import ConfigError
from distill.filters.base import Filter, register_filter
from distill.warehouse.schema import Trace


def repeated_share(text: str, n: int = 10) -> float:
    """Share of the words that lie in an n-gram already seen earlier in the text.

    This catches a loop of any period: a paragraph said k times scores (k-1)/k, a word said over and
    over scores ~1. (The share of the single most frequent n-gram would not: in a 100-word paragraph
    repeated 50 times each 10-gram covers only a tenth of the text.) Text shorter than n words, or
    with no n-gram seen twice, scores 0.
    """
    words = text.lower().split()
    if len(words) <= n:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    covered = covered_until = 0
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        if gram in seen:
            covered += i + n - max(i, covered_until)  # count each word once where repeats overlap
            covered_until = i + n
        else:
            seen.add(gram)
    return covered / len(words)


@register_filter("repetition")
class Repetition(Filter):
    """Share of the reasoning that repeats earlier reasoning verbatim (word n-grams, n=10)."""

    def __init__(self, n: int = 10, max_share: float = 0.3):
        if n < 1 or not 0.0 <= max_share <= 1.0:
            raise ConfigError(f"repetition filter: need n >= 1 and 0 <= max_share <= 1, got n={n}, "
                             f"max_share={max_share}")
        self.n, self.max_share = n, max_share

    def score(self, trace: Trace) -> float:
        return repeated_share(trace.reasoning or trace.completion or "", self.n)

    def keep(self, score: float) -> bool | tuple[bool, str]:
        return score <= self.max_share or (False, "repetitive")
