"""Math answers checked by math-verify.

The answer is looked for after `</think>` only (an intermediate result inside the reasoning is not
an answer): the last `\\boxed{}` first, then a plain final expression. The gold answer is passed as
`$…$`, which math-verify parses far more reliably than bare text.
"""
from __future__ import annotations

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify as mv_verify

from verifiers import Verdict
from warehouse.schema import THINK_CLOSE, THINK_OPEN, split_think

_PRED_CONFIG = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
_GOLD_CONFIG = [LatexExtractionConfig(), ExprExtractionConfig()]


def _gold(reference: str):
    ref = reference.strip()
    if not (ref.startswith("$") or "\\boxed" in ref):
        ref = f"${ref}$"
    return parse(ref, extraction_config=_GOLD_CONFIG, fallback_mode="no_fallback")


def verify(completion: str, reference: str | None) -> Verdict:
    if reference is None or not str(reference).strip():
        return Verdict(None, "no_reference")
    gold = _gold(str(reference))
    if not gold:
        return Verdict(None, "unparseable_reference")
    if THINK_OPEN in completion and THINK_CLOSE not in completion:
        return Verdict(False, "unclosed_think")
    _, answer = split_think(completion)
    if not answer:
        return Verdict(False, "no_answer")
    pred = parse(answer, extraction_config=_PRED_CONFIG, fallback_mode="no_fallback")
    if not pred:
        return Verdict(False, "no_answer")
    extracted = str(pred[-1])
    return Verdict(True, "match", extracted) if mv_verify(gold, pred) else Verdict(False, "mismatch", extracted)
