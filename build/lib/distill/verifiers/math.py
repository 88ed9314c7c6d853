"""Math answers checked by math-verify.

Where the answer is taken from, in order (only the text after `</think>` counts: an intermediate
result inside the reasoning is not an answer, and a `<think>` that is never closed is a failure):
1. the LAST `\\boxed{}` (or `\\fbox{}`): a model that corrects itself boxes again, so the last box
   wins; boxes joined only by a separator (`,`, `;`, `and`, `or`, LaTeX spacing such as `\\quad` or
   `\\;`, a `\\text{ for part (a) and }`) are one multi-part answer. Trailing unit words inside the
   box (`\\boxed{18 dollars}`, `\\boxed{12个}`) are dropped. An explicit "final answer … is X" written
   after the last box overrides it, as it does in math-verify (the box was an intermediate result);
2. the line after the last `#### ` (GSM8K style);
3. the line after the last answer word of another language ("Réponse :", "Respuesta:", "Antwort:",
   "答案", "结论", "答：", "Ответ:", …): only that line, so a numbered list after it is not the answer;
4. math-verify's own anchors on the whole answer: "final answer is X", "answer: X",
   "the answer is X", then the last number or expression.
Numbers glued to CJK characters (`共有12个`) are split from them before math-verify reads the text.

Comparison is math-verify's (fractions = decimals, sets/intervals, `\\text`, `\\dfrac`, `\\$`,
units, `^\\circ`, thousands separators). Percentages: a `%` sign need not agree with the gold —
`50\\%` matches a gold of `50`, `50\\%` and `0.5`; a bare `0.5` does not match a gold of `50`.
math-verify compares numbers with a tolerance, so two different tiny or huge exact quantities (the
reciprocals of 100! and 101!) "match": where both sides are exact numbers (no decimals), a match
is confirmed exactly, and a false "correct" becomes a mismatch.

The gold answer is passed as `$…$`, which math-verify parses far more reliably than bare text; a
list that does not parse as a whole (`x = \\pm 2, y = \\pm 3`) is parsed part by part, on both sides.
A gold that still does not parse gives `correct=None` (unless the answer is the same text). Parsed
golds are cached: the n samples of a problem share one reference.
"""
from __future__ import annotations

import re
import unicodedata
from fractions import Fraction
from functools import lru_cache

from latex2sympy2_extended.sets import FiniteSet
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify as mv_verify
from math_verify.errors import TimeoutException
from math_verify.utils import timeout
from sympy import Basic, Eq, Float, Interval, Mul, Rational, Tuple, UnevaluatedExpr
from sympy.sets.sets import FiniteSet as SympyFiniteSet

from distill.verifiers import Verdict, boxes as find_boxes, structured
from distill.warehouse.schema import THINK_CLOSE, THINK_OPEN, split_think

_PRED_CONFIG = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
_GOLD_CONFIG = [LatexExtractionConfig(), ExprExtractionConfig()]
EXACT_TIMEOUT_S = 2  # for the exact check of numbers already equal to 50 digits
_LATEX_ONLY = [LatexExtractionConfig(boxed_match_priority=0)]
_EXPR_ONLY = [ExprExtractionConfig()]
# After the last box only an anchored answer counts ("final answer is X"), never a stray number.
_ANCHORED = [LatexExtractionConfig(try_extract_without_anchor=False, boxed_match_priority=-1),
             ExprExtractionConfig(try_extract_without_anchor=False)]

# Text allowed between two boxes that form one answer: separators, LaTeX spacing, joining words and
# part labels, bare or in `\text{}`; never other words ("\boxed{3}, then correcting, \boxed{18}").
_SEP_TEXT = re.compile(r"\\(?:text|textrm|textnormal|mbox|mathrm)\s*\{([^{}]*)\}")
_BOX_SEPARATOR = re.compile(
    r"(?:\s|\$|,|;|~|\\\\|\\(?:q?quad|enspace|[;,:! ])"
    r"|\b(?i:and|or|for|part|parts|respectively|et|ou|und|oder|y|o)\b"
    r"|\(?\b[a-d]\)|\((?:i|ii|iii|iv)\)|[和与或及])*")
_PERCENT_AFTER = re.compile(r"\s*\\?%")
# A number followed by plain words: `18 dollars`, `\$5.40 per hour`, `10,\!080 apples`, `12个`.
_NUMBER_THEN_WORDS = re.compile(
    r"(?P<num>(?:\\?\$)?\s*-?(?:[\d.,]|\\!)*\d(?:\s*\\?%)?)\s*"
    r"(?P<words>[A-Za-z]{2,}\.?(?:\s+[A-Za-z]{2,}\.?)*|[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]+)")
_MATH_WORDS = {"pi", "infty", "inf", "sqrt", "cdot", "times", "circ", "and", "or"}
_PCT = UnevaluatedExpr(Rational(1, 100))
_FINAL_ANSWER = re.compile(r"(?i:final answer)")
# Answer words of other languages (English ones are math-verify's); the longest first.
_ANSWER_WORD = re.compile(
    r"(?i:réponse finale|reponse finale|réponse|reponse|respuesta final|respuesta|resposta final|resposta"
    r"|risposta|endergebnis|antwort|ergebnis|окончательный ответ|ответ)"
    r"|最终答案|最終答案|答案|结论|結論|答え|解答|정답|答(?=\s*[:：])")  # bare 答 only as 答：, not in 回答
_ANSWER_LEAD = re.compile(r"^[\s*:：]*(?:(?i:est|es|ist|é|è)\b|是|为|為|:|：)?[\s*:：]*")
_CJK = r"\u3000-\u303f\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uff00-\uffef"
_CJK_GLUE = re.compile(rf"(?<=[{_CJK}])(?=[-\d$\\])|(?<=[\d$}}])(?=[{_CJK}])")
_CHOICE = re.compile(r"\(?([A-E])\)?\.?")
_SENTENCE_END = re.compile(r"[。；！？]|(?<!\d)，|，(?!\d)|[.;]\s")


def _last_boxed(answer: str) -> tuple[str, int] | None:
    """(the last box's content, with the boxes joined to it as one answer; where the last box ends)."""
    boxes = find_boxes(answer)
    if not boxes:
        return None
    parts = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if not _BOX_SEPARATOR.fullmatch(_SEP_TEXT.sub(r" \1 ", answer[box[1]:parts[0][0]])):
            break
        parts.insert(0, box)
    contents = []
    for _, end, content in parts:
        if _PERCENT_AFTER.match(answer, end) and not content.endswith("%"):
            content += "\\%"  # `\boxed{50}\%`
        contents.append(_drop_unit_words(content))
    return ", ".join(contents), boxes[-1][1]


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


def _answer_line(answer: str) -> str | None:
    """What follows the last answer word of another language: the rest of its line, or the next
    non-empty line, up to the end of the sentence; None if there is no such word or no math there."""
    last = None
    for last in _ANSWER_WORD.finditer(answer):
        pass
    if last is None:
        return None
    rest = answer[last.end():]
    rest = rest[_ANSWER_LEAD.match(rest).end():]
    line = next((ln.strip(" *") for ln in rest.split("\n") if ln.strip(" *")), "")
    if "$" not in line and "\\" not in line:  # LaTeX is cut by math-verify itself, prose here
        line = _SENTENCE_END.split(line, 1)[0]
    line = _unglue(line).strip()
    if m := _CHOICE.fullmatch(line):  # a multiple-choice letter: math mode makes it math-verify's
        return f"${m[1]}$"
    return line if re.search(r"\d|\\", line) else None


def _unglue(text: str) -> str:
    """Full-width forms made plain and numbers split from CJK characters, which math-verify needs."""
    if not re.search(f"[{_CJK}]", text):
        return text
    return _CJK_GLUE.sub(" ", unicodedata.normalize("NFKC", text))


def _split_list(latex: str) -> list[str]:
    """A LaTeX list split at its top-level commas and semicolons (not inside braces or brackets, not
    a thousands separator)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(latex):
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
        elif ch in ",;" and depth == 0 and not re.match(r"\d{3}", latex[i + 1:]):
            parts.append(latex[start:i])
            start = i + 1
    parts.append(latex[start:])
    return [p.strip() for p in parts if p.strip()]


def _parse_latex(latex: str, wrap: str) -> list:
    """math-verify's LaTeX parse of one answer (`wrap` puts it in math mode); a list that does not
    parse as a whole, such as equations with `\\pm`, is parsed part by part into one set."""
    parsed = parse(wrap.format(latex), extraction_config=_LATEX_ONLY, fallback_mode="no_fallback")
    if parsed:
        return parsed
    parts = _split_list(_SEP_TEXT.sub(",", latex)) if ("," in latex or ";" in latex or "\\text" in latex) else []
    if len(parts) > 1:
        each = [parse(f"${p}$", extraction_config=_LATEX_ONLY, fallback_mode="no_fallback") for p in parts]
        if all(each):
            return [FiniteSet(*(e[0] for e in each))]
    return []


@lru_cache(maxsize=4096)
def _gold(reference: str) -> tuple:
    ref = reference.strip()
    if "####" in ref:  # a raw GSM8K solution: the reference is what follows the marker
        ref = ref.rsplit("####", 1)[1].strip()
    if "\\boxed" in ref:
        return tuple(parse(ref, extraction_config=_GOLD_CONFIG, fallback_mode="no_fallback"))
    if len(ref) > 1 and ref.startswith("$") and ref.endswith("$"):
        ref = ref.strip("$")
    parsed = _parse_latex(ref, "${}$")
    if not parsed and "=" not in ref:  # a plain number in words; never half of an equation list
        parsed = parse(f"${ref}$", extraction_config=_EXPR_ONLY, fallback_mode="no_fallback")
    return tuple(parsed)


def _locate(answer: str) -> tuple[str, str | None, str | None]:
    """(where the answer was found, the answer text, the box content it overrides or None)."""
    boxed = _last_boxed(answer)
    if boxed is not None:
        content, end = boxed
        if _FINAL_ANSWER.search(answer, end):
            return "final", answer[end:], content
        return "boxed", content, None
    hashes = _hashes(answer)
    if hashes is not None:
        return "hashes", hashes, None
    line = _answer_line(answer)
    if line is not None:
        return "line", line, None
    return "whole", _unglue(answer), None


def _parse_box(content: str) -> list:
    return (_parse_latex(content, "\\boxed{{{}}}")
            or parse(f"\\boxed{{{content}}}", extraction_config=_PRED_CONFIG, fallback_mode="no_fallback"))


def _extract(answer: str) -> tuple[str, list]:
    """(where the answer was found, the parsed prediction)."""
    where, text, box = _locate(answer)
    if where == "boxed":
        return where, _parse_box(text)
    if where == "final":
        return where, parse(text, extraction_config=_ANCHORED, fallback_mode="no_fallback") or _parse_box(box)
    pred = parse(text, extraction_config=_PRED_CONFIG, fallback_mode="no_fallback")
    if not pred and where != "whole":  # a `####` or answer-word line without math: the whole answer
        pred = parse(_unglue(answer), extraction_config=_PRED_CONFIG, fallback_mode="no_fallback")
    return where, pred


def _without_percent(expr):
    """`X%` is parsed as X·(1/100); the bare X, or None if expr is no percentage."""
    if isinstance(expr, Mul) and len(expr.args) == 2 and expr.args[1] == _PCT:
        return expr.args[0]
    return None


def _exact_values(expr) -> list | None:
    """The exact numbers an answer stands for, in a comparable order; None when it is anything else
    (a decimal, a percentage, a symbol, a relation other than `x = …`)."""
    if isinstance(expr, Eq) and expr.lhs.is_Symbol:
        return _exact_values(expr.rhs)
    if isinstance(expr, Interval):  # `(a, b)` is read as an open interval: its ends
        return _exact_values(Tuple(expr.start, expr.end))
    if isinstance(expr, (Tuple, FiniteSet, SympyFiniteSet)):
        values = [_exact_values(a) for a in expr.args]
        if any(v is None for v in values):
            return None
        flat = [x for v in values for x in v]
        return flat if isinstance(expr, Tuple) else sorted(flat, key=lambda x: x.evalf(30))
    if (isinstance(expr, Basic) and expr.is_number and not expr.has(Float)
            and not expr.has(UnevaluatedExpr)):
        return [expr]
    return None


def _exactly_different(gold, pred) -> bool:
    """Whether two answers math-verify called equal are different exact numbers.

    Compared to 50 significant digits (math-verify's check is absolute, so any two tiny numbers
    agree); numbers equal that far are settled exactly where that finishes in time.
    """
    if gold == pred:  # the same expression, structurally
        return False
    try:
        g, p = _exact_values(gold), _exact_values(pred)
        if g is None or p is None or len(g) != len(p):
            return False  # not two lists of exact numbers: math-verify's verdict stands
        for a, b in zip(g, p):
            va, vb = a.evalf(50), b.evalf(50)
            if abs(va - vb) > Float("1e-40") * max(abs(va), abs(vb)):
                return True
        return timeout(EXACT_TIMEOUT_S)(_exact_difference)(g, p)
    except TimeoutException:
        return False
    except (TypeError, ValueError, ArithmeticError, AttributeError, RecursionError):
        return False


def _exact_difference(g: list, p: list) -> bool:
    return any((a - b).doit().is_zero is False for a, b in zip(g, p))


def _equal(gold: list, pred: list) -> bool:
    if any(mv_verify(g, p) and not _exactly_different(g, p) for g in gold for p in pred):
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


def _normalized_text(text: str) -> str:
    return re.sub(r"\s+|\\[,;:! ]", "", text.strip().strip("$"))


def verify(completion: str, reference: str | None) -> Verdict:
    if reference is None or not str(reference).strip():
        return Verdict(None, "no_reference")
    ref = str(reference)
    data = structured(ref)
    if isinstance(data, dict) or isinstance(data, list) and any(isinstance(x, (str, list, dict)) for x in data):
        # A code or countdown reference, or a list of answers in quotes: no LaTeX to compare with (read
        # as LaTeX, `["2", "3"]` would be the interval [2, 3]). `[2, 3]` is LaTeX and stays math.
        return Verdict(None, "unparseable_reference")
    gold_number = _numeral(ref.rsplit("####", 1)[1] if "####" in ref else ref)
    gold = [] if gold_number is not None else list(_gold(ref))
    unclosed = THINK_OPEN in completion and THINK_CLOSE not in completion
    _, answer = split_think(completion)
    if gold_number is None and not gold:
        # No parse of the gold to compare with; the very same text is still the same answer.
        where, text, _ = _locate(answer) if answer and not unclosed else ("", None, None)
        if where in ("boxed", "hashes", "line") and _normalized_text(text) == _normalized_text(ref):
            return Verdict(True, "match", text)
        return Verdict(None, "unparseable_reference")
    if unclosed:
        return Verdict(False, "unclosed_think")
    if not answer:
        return Verdict(False, "no_answer")
    if gold_number is not None:
        # Fast path, exact: a numeral against a numeral needs no LaTeX parser. Most math answers
        # (all of GSM8K's) are plain numbers; this is ~50x cheaper than math-verify's parse.
        where, text, _ = _locate(answer)
        pred_number = _numeral(text) if where in ("boxed", "hashes", "line") else None
        if pred_number is not None:
            ok = pred_number == gold_number
            return Verdict(ok, "match" if ok else "mismatch", text.strip().strip("$").strip())
        gold = list(_gold(ref))
    where, pred = _extract(answer)
    if not pred:
        return Verdict(False, "unparseable_answer" if where in ("boxed", "final") else "no_answer")
    extracted = str(pred[0])
    return Verdict(True, "match", extracted) if _equal(gold, pred) else Verdict(False, "mismatch", extracted)
