"""The two filters every run needs: truncation and rejection (the verifier's verdict)."""
from __future__ import annotations

from distill.errors import ConfigError
from distill.filters.base import Filter, register_filter
from distill.warehouse.schema import Trace

# Which verdict decides (the recipe's `judge_uses`) when a judge verified too: the rules' (`correct`), the
# judge's (`judge_correct`), either of them, or both.
USES = ("rules", "judge", "either", "both")


def verdict(trace: Trace, uses: str = "rules") -> bool | None:
    """The verdict rejection and pass rates go by; None: it could not be decided.

    rules / judge: that verdict as it is. either: True when one says True, False when every verdict
    there is says False. both: False when one says False, True only when both say True.
    """
    if uses == "rules":
        return trace.correct
    if uses == "judge":
        return trace.judge_correct
    known = [v for v in (trace.correct, trace.judge_correct) if v is not None]
    if uses == "either":
        return True if any(known) else (False if known else None)
    if uses == "both":
        return False if False in known else (True if len(known) == 2 else None)
    raise ConfigError(f"judge_uses must be one of {', '.join(USES)}, got {uses!r}")


def wrong_reason(trace: Trace, uses: str) -> str:
    """The reason of a rejected sample, naming the verdict that rejected it: `wrong_answer` when the rules
    said No (and counted), `judge_wrong` when only the judge's No did."""
    if uses == "rules":
        return "wrong_answer"
    return "judge_wrong" if uses == "judge" or trace.correct is not False else "wrong_answer"


@register_filter("truncation")
class Truncation(Filter):
    """A sample cut off at max_tokens (finish_reason = length) is kept in the warehouse, rejected here."""

    def score(self, trace: Trace) -> float:
        return 1.0 if trace.finish_reason == "length" else 0.0

    def keep(self, score: float) -> bool | tuple[bool, str]:
        return score == 0.0 or (False, "truncated")


@register_filter("rejection")
class Rejection(Filter):
    """Rejection sampling: keep verified-correct samples. Score 1 correct, 0 wrong, null unverifiable.

    `uses` picks the verdict (see `verdict`); the recipe's `judge_uses` sets it. A sample the judge's No
    rejects is rejected as `judge_wrong`, one the rules' No rejects as `wrong_answer`.
    """

    def __init__(self, keep_unverifiable: bool = False, uses: str = "rules"):
        if uses not in USES:
            raise ConfigError(f"judge_uses must be one of {', '.join(USES)}, got {uses!r}")
        self.keep_unverifiable, self.uses = keep_unverifiable, uses
        self._wrong = "wrong_answer"

    def score(self, trace: Trace) -> float | None:
        v = verdict(trace, self.uses)
        self._wrong = wrong_reason(trace, self.uses)  # decide() follows score() of the same trace
        return None if v is None else float(v)

    def keep(self, score: float | None) -> bool | tuple[bool, str]:
        if score is None:
            return self.keep_unverifiable or (False, "unverifiable")
        return score == 1.0 or (False, self._wrong)
