"""The R1 output format: one closed `<think>…</think>` block with reasoning in it, then an answer.

A completion without the opening tag but with one `</think>` passes: R1-Distill chat templates end
the prompt with `<think>\\n`, so the model's text starts inside the block (`split_think` reads it the
same way). Anything but whitespace before `<think>` fails, as in R1's format reward. An empty
reasoning block fails too: a trace without reasoning teaches a student nothing about reasoning.
`reference` is ignored; the verdict is never None.
"""
from __future__ import annotations

from distill.verifiers import Verdict
from distill.warehouse.schema import THINK_CLOSE, THINK_OPEN, split_think


def verify(completion: str, reference: str | None = None) -> Verdict:
    opens, closes = completion.count(THINK_OPEN), completion.count(THINK_CLOSE)
    if not opens and not closes:
        return Verdict(False, "no_think")
    if opens > 1 or closes > 1:
        return Verdict(False, "multiple_think")
    if not closes or (opens and completion.find(THINK_OPEN) > completion.find(THINK_CLOSE)):
        return Verdict(False, "unclosed_think")
    if opens and completion[:completion.find(THINK_OPEN)].strip():
        return Verdict(False, "text_before_think")
    reasoning, answer = split_think(completion)
    if not reasoning:
        return Verdict(False, "empty_reasoning")
    if not answer:
        return Verdict(False, "empty_answer")
    return Verdict(True, "ok")
