"""Math answers checked by math-verify.

Where the answer is taken from, in order (only the text after `</think>` counts: an intermediate
result inside the reasoning is not an answer, and a `<think>` that is never closed is a failure):
1. the LAST `\\boxed{}` (or `\\fbox{}`): a model that corrects itself boxes again, so the last box
   wins; boxes joined only by a separator (`\\boxed{2}, \\boxed{3}`, `\\boxed{2} and \\boxed{3}`) are
   one multi-part answer. Trailing unit words inside the box (`\\boxed{18 dollars}`) are dropped.
2. the line after the last `#### ` (GSM8K style);
3. math-verify's own anchors on the whole answer: "final answer is X", "answer: X",
   "the answer is X", then the last number or expression.

Comparison is math-verify's (fractions = decimals, sets/intervals, `\\text`, `\\dfrac`, `\\$`,
units, `^\\circ`, thousands separators). Percentages: a `%` sign need not agree with the gold —
`50\\%` matches a gold of `50`, `50\\%` and `0.5`; a bare `0.5` does not match a gold of `50`.

The gold answer is passed as `$…$`, which math-verify parses far more reliably than bare text; a
gold that still does not parse gives `correct=None`. Parsed golds are cached: the n samples of a
problem share one reference.
"""
from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify as mv_verify
from sympy import Mul, Rational, UnevaluatedExpr

from verifiers import Verdict, boxes as find_boxes, structured
from warehouse.schema import THINK_CLOSE, THINK_OPEN, split_think

_PRED_CONFIG = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
_GOLD_CONFIG = [LatexExtractionConfig(), ExprExtractionConfig()]

# Text allowed between two boxes that form one answer: a separator and nothing else.
_BOX_SEPARATOR = re.compile(r"\s*\$*\s*(?:,|;|,?\s*and|,?\s*or)?\s*\$*\s*")
_PERCENT_AFTER = re.compile(r"\s*\\?%")
# A number followed by plain words: `18 dollars`, `\$5.40 per hour`, `10,\!080 apples`.
_NUMBER_THEN_WORDS = re.compile(
    r"(?P<num>(?:\\?\$)?\s*-?(?:[\d.,]|\\!)*\d(?:\s*\\?%)?)\s*(?P<words>[A-Za-z]{2,}\.?(?:\s+[A-Za-z]{2,}\.?)*)")
_MATH_WORDS = {"pi", "infty", "inf", "sqrt", "cdot", "times", "circ", "and", "or"}
_PCT = UnevaluatedExpr(Rational(1, 100))


def _last_boxed(answer: str) -> str | None:
    boxes = find_boxes(answer)
    if not boxes:
        return None
    parts = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if not _BOX_SEPARATOR.fullmatch(answer[box[1]:parts[0][0]]):
            break
        parts.insert(0, box)
    contents = []
    for _, end, content in parts:
        if _PERCENT_AFTER.match(answer, end) and not content.endswith("%"):
            content += "\\%"  # `\boxed{50}\%`
        contents.append(_drop_unit_words(content))
    return ", ".join(contents)


def _drop_unit_words(content: str) -> str:
    m = _NUMBER_THEN_WORDS.fullmatch(content)
    if m and not any(w.rstrip(".").lower() in _MATH_WORDS for w in m["words"].split()):
        return m["num"]
    return content


def _hashes(answer: str) -> str | None:
    """The rest of the line after the last `####`, if any."""
    if "####" not in answer:
        return None
    line = answer.rsplit("####", 1)[1].strip().split("\n", 1)[0].strip()
    return line or None


@lru_cache(maxsize=4096)
def _gold(reference: str) -> tuple:
    ref = reference.strip()
    if "####" in ref:  # a raw GSM8K solution: the reference is what follows the marker
        ref = ref.rsplit("####", 1)[1].strip()
    already_math = len(ref) > 1 and ref.startswith("$") and ref.endswith("$")
    if not (already_math or "\\boxed" in ref):
        ref = f"${ref}$"
    return tuple(parse(ref, extraction_config=_GOLD_CONFIG, fallback_mode="no_fallback"))


def _extract(answer: str) -> tuple[list, bool]:
    """(parsed prediction, whether the answer was boxed)."""
    boxed = _last_boxed(answer)
    if boxed is not None:
        return parse(f"\\boxed{{{boxed}}}", extraction_config=_PRED_CONFIG, fallback_mode="no_fallback"), True
    hashes = _hashes(answer)
    if hashes is not None:
        pred = parse(hashes, extraction_config=_PRED_CONFIG, fallback_mode="no_fallback")
        if pred:
            return pred, False
    return parse(answer, extraction_config=_PRED_CONFIG, fallback_mode="no_fallback"), False


def _without_percent(expr):
    """`X%` is parsed as X·(1/100); the bare X, or None if expr is no percentage."""
    if isinstance(expr, Mul) and len(expr.args) == 2 and expr.args[1] == _PCT:
        return expr.args[0]
    return None


def _equal(gold: list, pred: list) -> bool:
    if mv_verify(gold, pred):
        return True
    # math-verify equates 50% with 50 but not 12.5% with 12.5: the sign is dropped on both sides
    # and compared once more, so a gold that left out (or kept) the % sign is matched either way.
    g, p = [_without_percent(x) for x in gold], [_without_percent(x) for x in pred]
    if not any(x is not None for x in g + p):
        return False
    return mv_verify([b if a is None else a for a, b in zip(g, gold)],
                     [b if a is None else a for a, b in zip(p, pred)])


_NUMERAL = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def _numeral(text: str | None) -> Fraction | None:
    """A plain decimal numeral ("18", "-3", "1,000", "0.50", "$18$") as an exact number, else None."""
    if text is None:
        return None
    text = text.strip().strip("$").strip().replace("\\!", "")
    return Fraction(text.replace(",", "")) if _NUMERAL.fullmatch(text) else None


def verify(completion: str, reference: str | None) -> Verdict:
    if reference is None or not str(reference).strip():
        return Verdict(None, "no_reference")
    ref = str(reference)
    if isinstance(structured(ref), dict):  # a code or countdown reference: no math answer to compare with
        return Verdict(None, "unparseable_reference")
    gold_number = _numeral(ref.rsplit("####", 1)[1] if "####" in ref else ref)
    gold = [] if gold_number is not None else list(_gold(ref))
    if gold_number is None and not gold:
        return Verdict(None, "unparseable_reference")
    if THINK_OPEN in completion and THINK_CLOSE not in completion:
        return Verdict(False, "unclosed_think")
    _, answer = split_think(completion)
    if not answer:
        return Verdict(False, "no_answer")
    if gold_number is not None:
        # Fast path, exact: a numeral against a numeral needs no LaTeX parser. Most math answers
        # (all of GSM8K's) are plain numbers; this is ~50x cheaper than math-verify's parse.
        candidate = _last_boxed(answer)
        if candidate is None:
            candidate = _hashes(answer)
        pred_number = _numeral(candidate)
        if pred_number is not None:
            ok = pred_number == gold_number
            return Verdict(ok, "match" if ok else "mismatch", candidate.strip().strip("$").strip())
        gold = list(_gold(ref))
    pred, boxed = _extract(answer)
    if not pred:
        return Verdict(False, "unparseable_answer" if boxed else "no_answer")
    extracted = str(pred[0])
    return Verdict(True, "match", extracted) if _equal(gold, pred) else Verdict(False, "mismatch", extracted)
