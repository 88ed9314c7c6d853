"""The two filters every run needs: truncation and rejection (the verifier's verdict)."""
from __future__ import annotations

from distill.filters.base import Filter, register_filter
from distill.warehouse.schema import Trace


@register_filter("truncation")
class Truncation(Filter):
    """A sample cut off at max_tokens (finish_reason = length) is kept in the warehouse, rejected here."""

    def score(self, trace: Trace) -> float:
        return 1.0 if trace.finish_reason == "length" else 0.0

    def keep(self, score: float) -> bool | tuple[bool, str]:
        return score == 0.0 or (False, "truncated")


@register_filter("rejection")
class Rejection(Filter):
    """Rejection sampling: keep verified-correct samples. Score 1 correct, 0 wrong, null unverifiable."""

    def __init__(self, keep_unverifiable: bool = False):
        self.keep_unverifiable = keep_unverifiable

    def score(self, trace: Trace) -> float | None:
        return None if trace.correct is None else float(trace.correct)

    def keep(self, score: float | None) -> bool | tuple[bool, str]:
        if score is None:
            return self.keep_unverifiable or (False, "unverifiable")
        return score == 1.0 or (False, "wrong_answer")
