"""Readability of the chain of thought (DeepSeek-R1's cold-start data): no code in math reasoning,
no walls of text."""
from __future__ import annotations

import re

from distill.filters.base import Filter, register_filter
from distill.warehouse.schema import Trace

_FENCE = re.compile(r"^[ \t]*(?:```|~~~)", re.M)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def code_blocks(text: str) -> int:
    """Fenced code blocks; an opening fence that is never closed still counts as one."""
    return (len(_FENCE.findall(text)) + 1) // 2


def longest_paragraph(text: str) -> int:
    """Characters in the longest paragraph; paragraphs are separated by blank lines, as in Markdown."""
    return max((len(p.strip()) for p in _PARAGRAPH_BREAK.split(text)), default=0)


@register_filter("code_in_cot")
class CodeInCot(Filter):
    """Fenced code blocks in the reasoning. For math, R1 wanted none; leave this filter out of code recipes
    (or raise `max_blocks`), where writing code while thinking is the point."""

    def __init__(self, max_blocks: int = 0):
        self.max_blocks = max_blocks

    def score(self, trace: Trace) -> float:
        return float(code_blocks(trace.reasoning or ""))

    def keep(self, score: float) -> bool | tuple[bool, str]:
        return score <= self.max_blocks or (False, "code_in_cot")


@register_filter("long_paragraph")
class LongParagraph(Filter):
    """Longest paragraph of the reasoning, in characters: a wall of text is hard to read and to learn from.

    2,000 characters is ~350 English words, several times a typical R1 paragraph.
    """

    def __init__(self, max_chars: int = 2000):
        self.max_chars = max_chars

    def score(self, trace: Trace) -> float:
        return float(longest_paragraph(trace.reasoning or trace.completion or ""))

    def keep(self, score: float) -> bool | tuple[bool, str]:
        return score <= self.max_chars or (False, "long_paragraph")
