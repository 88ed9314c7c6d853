"""Length bounds on the completion, in tokens."""
from __future__ import annotations

from distill.errors import ConfigError
from distill.filters.base import Filter, register_filter
from distill.warehouse.schema import Trace


@register_filter("length")
class Length(Filter):
    """Completion tokens as the backend counted them; whitespace words when it did not say.

    The default drops only empty completions; set `min_tokens` / `max_tokens` for the teacher and the
    student's context (a student trained at 16k gains nothing from 30k-token traces).
    """

    def __init__(self, min_tokens: int = 1, max_tokens: int | None = None):
        if min_tokens < 0 or (max_tokens is not None and max_tokens < min_tokens):
            raise ConfigError(f"length filter: need 0 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
        self.min_tokens, self.max_tokens = min_tokens, max_tokens

    def score(self, trace: Trace) -> float:
        if trace.completion_tokens is not None:
            return float(trace.completion_tokens)
        return float(len((trace.completion or "").split()))

    def keep(self, score: float) -> bool | tuple[bool, str]:
        if score < self.min_tokens:
            return False, "too_short"
        if self.max_tokens is not None and score > self.max_tokens:
            return False, "too_long"
        return True
