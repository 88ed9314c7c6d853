"""Countdown and the Game of 24: an arithmetic expression that reaches a target.

The reference is JSON, `{"numbers": [4, 7, 8, 8], "target": 24}` (TinyZero's `nums` works too), or
bare numbers, `"4 7 8 8"` or `[4, 7, 8, 8]`, which mean the Game of 24 (the Python repr of the object or
list is read too). Any other reference is `bad_reference`, null. The answer, after `</think>`, is the last
`\\boxed{}`, else the last `<answer>…</answer>`, else the last expression written on a line of its
own or inside one (`So (8 - 4) * (7 - 1) = 24.`); of `a = b = 24` the first side with an operator
is the answer.

Rules: each given number is used exactly once; only binary + - * / and parentheses (`×`, `÷`,
`\\times`, `\\div`, `\\cdot`, `x` between numbers and `\\frac{a}{b}` are read as * and /); no unary
minus, since the game combines two numbers at a time; arithmetic is exact (fractions), so
8 / (3 - 8/3) is 24. The expression is parsed with `ast` and only whitelisted nodes are walked —
nothing is ever `eval`ed.
"""
from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

from distill.verifiers import Verdict, boxes, structured
from distill.warehouse.schema import THINK_CLOSE, THINK_OPEN, split_think

MAX_EXPRESSION_CHARS = 500  # a real answer is a few dozen characters; this bounds parse work

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_TIMES_X = re.compile(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])")
_EXPR_RUN = re.compile(r"[\d\s+\-*/().=]+")
_ARITHMETIC = re.compile(r"[\d\s+\-*/()]+")
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


class _Invalid(Exception):
    pass


def parse_reference(reference: str) -> tuple[list[int], int] | None:
    """(numbers, target), or None when the reference is not one of the two accepted shapes."""
    text = reference.strip()
    data = structured(text)  # JSON, or the Python repr of an object or list
    if isinstance(data, dict):
        numbers, target = data.get("numbers", data.get("nums")), data.get("target")
    elif isinstance(data, list):  # [4, 7, 8, 8]: the Game of 24
        numbers, target = data, 24
    else:  # "4 7 8 8" or "4,7,8,8": the Game of 24
        numbers, target = re.split(r"[\s,]+", text), 24
    try:
        numbers = [_integer(n) for n in numbers]
        target = _integer(target)
    except (TypeError, ValueError):
        return None
    return (numbers, target) if numbers else None


def _integer(value) -> int:
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _last_boxed(text: str) -> str | None:
    found = boxes(text)
    return found[-1][2] if found else None


def _normalize(text: str) -> str:
    text = re.sub(r"\\left|\\right|\\[()\[\]]|\$|\*\*|\\!|\\,|\\ ", " ", text)
    text = re.sub(r"\\times|\\cdot|×|·|∗", "*", text)
    text = re.sub(r"\\div|÷|∕", "/", text)
    text = text.replace("−", "-")
    while (new := _FRAC.sub(r"(\1)/(\2)", text)) != text:
        text = new
    text = text.replace("{", "(").replace("}", ")")
    return _TIMES_X.sub("*", text)


def _expression_in(line: str) -> str | None:
    """The last run of arithmetic in a line that holds at least one digit and one operator."""
    for run in reversed(_EXPR_RUN.findall(_normalize(line))):
        run = run.strip().rstrip(".").strip()
        if re.search(r"\d", run) and re.search(r"[+\-*/]", run):
            return run
    return None


def _candidate(answer: str) -> str | None:
    boxed = _last_boxed(answer)
    if boxed is not None:
        return _normalize(boxed).strip() or None
    tags = _ANSWER_TAG.findall(answer)
    if tags:
        return _normalize(tags[-1]).strip() or None
    for line in reversed(answer.splitlines()):
        if expr := _expression_in(line):
            return expr
    return None


def _pick_side(expr: str) -> str:
    """Of `a = b = 24`, the first side with an operator (the full expression); else the first."""
    sides = [s.strip() for s in expr.split("=")]
    return next((s for s in sides if re.search(r"[+\-*/]", s)), sides[0])


def _leaves(node: ast.AST) -> list[int]:
    """The integer literals of a tree of binary + - * / over integers; _Invalid for anything else."""
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _leaves(node.left) + _leaves(node.right)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return [node.value]
    raise _Invalid(type(node).__name__)


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))


def verify(completion: str, reference: str | None) -> Verdict:
    if reference is None or not str(reference).strip():
        return Verdict(None, "no_reference")
    parsed = parse_reference(str(reference))
    if parsed is None:
        return Verdict(None, "bad_reference")
    numbers, target = parsed
    if THINK_OPEN in completion and THINK_CLOSE not in completion:
        return Verdict(False, "unclosed_think")
    _, answer = split_think(completion)
    expr = _candidate(answer)
    if expr is None:
        return Verdict(False, "no_answer")
    expr = _pick_side(expr)
    if len(expr) > MAX_EXPRESSION_CHARS:
        return Verdict(False, "invalid_expression", expr[:MAX_EXPRESSION_CHARS])
    if not _ARITHMETIC.fullmatch(expr):  # keeps Python-only literals (1_0, 0x18, 1e1, 2j) out of the parse
        return Verdict(False, "invalid_expression", expr)
    try:
        tree = ast.parse(expr, mode="eval").body
        leaves = _leaves(tree)
    except (SyntaxError, ValueError, RecursionError, MemoryError, _Invalid):
        return Verdict(False, "invalid_expression", expr)
    if Counter(leaves) != Counter(numbers):  # checked before evaluating: only the given numbers are ever computed
        return Verdict(False, "wrong_numbers", expr)
    try:
        value = _evaluate(tree)
    except ZeroDivisionError:
        return Verdict(False, "division_by_zero", expr)
    return Verdict(True, "match", expr) if value == target else Verdict(False, "wrong_value", expr)
