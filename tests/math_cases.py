"""Every (gold, answer, expected verdict) case the math verifier's tests hold, by answer class.

The tests parametrize over these lists; `benchmarks/verifier_agreement.py` runs distill and plain
math-verify over all of them and prints where they disagree. `answer` is the text after `</think>`
(the tests put a reasoning with a wrong intermediate `\\boxed{0}` before it). `why` says why distill
deliberately differs from plain math-verify on a case, where it does; a case where plain math-verify
is right and distill is wrong must have one (tests/test_math_verifier.py checks it).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    gold: str
    answer: str
    expected: bool | None
    why: str = ""

    def __str__(self) -> str:  # a readable pytest id
        return f"{self.gold} <- {self.answer}"[:60]


def completion(case: Case) -> str:
    """A completion whose reasoning holds a wrong intermediate result, then the case's answer."""
    return f"<think>First guess: \\boxed{{0}}. Let me check again.</think>\n{case.answer}"


def plain_math_verify(gold: str, answer: str, wrap_gold: bool = True) -> bool:
    """Plain math-verify, default settings, on the final answer. `wrap_gold` puts a gold that is not
    in math mode in `$…$`, as math-verify's README asks (without it, `2, 3` parses as 3)."""
    from math_verify import parse, verify

    if wrap_gold and not gold.lstrip().startswith(("$", "\\boxed", "\\[", "\\(")):
        gold = f"${gold}$"
    return verify(parse(gold), parse(answer))


GSM8K_RAW = ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
             "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market.\n#### 18")

# Gold answers copied verbatim from MATH-500 (HuggingFaceH4/MATH-500, MIT), each boxed by the model
# in a different but equal form, and once in a wrong form.
MATH500 = [
    ("\\dfrac{33}{100}", "0.33", "0.34"),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}^\\circ", "\\frac{7}{270}"),
    ("10,\\!080", "10080", "10008"),
    ("\\$32,\\!348", "32348 \\text{ dollars}", "32,384"),
    ("(-\\infty, 0]", "\\left(-\\infty,0\\right]", "(-\\infty, 0)"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", "(3, \\pi)"),
    ("3 \\pm 2 \\sqrt{2}", "3+2\\sqrt{2}, 3-2\\sqrt{2}", "3+2\\sqrt{2}"),
    ("\\text{(C)}", "\\textbf{(C)}", "(D)"),
    ("x \\in [-2,7]", "[-2, 7]", "(-2, 7)"),
    ("(0,9) \\cup (9,36)", "(9,36)\\cup(0,9)", "(0,36)"),
    ("\\$18.90", "18.9", "18.09"),
    ("90^\\circ", "90", "\\frac{\\pi}{2}"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", "\\sqrt{3}"),
    ("5.4 \\text{ cents}", "5.40", "54"),
    ("\\text{Evelyn}", "\\text{evelyn}", "\\text{Bob}"),
]

_BOXED = "So the answer is $\\boxed{{{}}}$."
_CURRENCY = ("math-verify does not parse a bare `\\$10` gold (so plain, given the gold as written, says false); "
             "distill passes every gold to it in `$…$`")
_NULL = ("a gold that does not parse can't be checked: distill says null, so the sample counts as "
         "unverifiable, not wrong; math-verify can only say false")

CASES: dict[str, list[Case]] = {
    # --- where the answer comes from ---------------------------------------------------------
    "last_box": [
        Case("18", "First \\boxed{3}, then correcting, \\boxed{18}", True),
        Case("18", "First \\boxed{18}, then correcting, \\boxed{3}", False),
        Case("18", "\\boxed{18} wait, no: \\boxed{\\frac{1}{2}}", False),
        Case("18", "\\boxed{\\boxed{18}}", True),
    ],
    "joined_boxes": [
        Case("2, 3", "\\boxed{2} and \\boxed{3}", True),
        Case("2, 3", "$\\boxed{2}$, $\\boxed{3}$", True),
    ],
    # Boxes joined by LaTeX spacing or text are one answer, not only the last box (issue 13, point 8).
    "spaced_boxes": [
        Case("2, 3", "\\boxed{2} \\quad \\text{and} \\quad \\boxed{3}", True),
        Case("2, 3", "$\\boxed{2}$ \\quad \\text{and} \\quad $\\boxed{3}$", True),
        Case("2, 3", "\\boxed{2} \\text{ for part (a) and } \\boxed{3}", True),
        Case("2, 3", "(a) $\\boxed{2}$ \\text{ for part (a) and } $\\boxed{3}$ for part (b).", True),
        Case("2, 3", "\\boxed{2} \\qquad \\boxed{3}", True),
        Case("2, 3", "$\\boxed{2} ;\\; \\boxed{3}$", True),
        Case("x=2, y=3", "$\\boxed{x=2}$ \\quad \\text{and} \\quad $\\boxed{y=3}$", True),
        Case("2, 3", "\\boxed{2}\\text{ or }\\boxed{3}", True),
        Case("2, 3", "\\boxed{2} \\\\ \\boxed{3}", True),
        Case("2, 3", "(a) \\boxed{2}\n(b) \\boxed{3}", True),
        Case("a=2, b=3", "\\boxed{a=2} \\quad \\boxed{b=3}", True),
        Case("2, 3", "\\boxed{2} \\quad \\text{and} \\quad \\boxed{4}", False),
        Case("3", "\\boxed{2} \\quad \\text{and} \\quad \\boxed{3}", False),
    ],
    # A later explicit "final answer is" beats an earlier intermediate box (issue 13, point 8).
    "final_answer_after_box": [
        Case("5", "So $x = \\boxed{3}$ is the intermediate value. Adding 2, the final answer is $5$.", True),
        Case("5", "Step 1 gives $\\boxed{3}$. Step 2 adds 2.\n\nThe final answer is $5$. I hope it is correct.", True),
        Case("3", "So $x = \\boxed{3}$ is the intermediate value. Adding 2, the final answer is $5$.", False),
        Case("18", "\\boxed{18}. That is my final answer.", True),
        Case("18", "The final answer is $3$... no, recomputing: \\boxed{18}", True),
        Case("18", "We get \\boxed{5} for one day. Final answer: 18", True),
    ],
    "unboxed": [
        Case("18", "#### 18", True),
        Case("18", "She makes 9 * 2 = 18 dollars.\n#### 18\nHope this helps with all 3 parts.", True),
        Case("18", "The answer is 18.", True),
        Case("18", "Final answer: 18", True),
        Case("18", "The final answer is $18$. I hope it is correct.", True),
        Case("18", "So she makes $18 per day at the market.", True),
        Case("1080", "The answer is 1,080.", True),
    ],
    # Answers in other languages (issue 13, point 8).
    "other_language": [
        Case("12", "Réponse : 12", True),
        Case("12", "**Réponse :** $12$", True),
        Case("12", "Réponse : 12\n\n1. Calcul\n2. Vérification", True),
        Case("12", "La réponse est 12. Elle vient de 3 × 4.", True),
        Case("12", "Respuesta: 12\n\n1. Sumamos\n2. Comprobamos", True),
        Case("12", "Antwort: 12\n\n1. Rechnung\n2. Probe", True),
        Case("12", "Ответ: 12\n\n1. Считаем\n2. Проверяем", True),
        Case("12", "答案：12", True),
        Case("12", "答案是12个苹果。", True),
        Case("12", "所以答案为12。", True),
        Case("12", "结论：共有12个苹果。", True),
        Case("12", "答：一共有12个。", True),
        Case("12", "答案：12\n\n1. 先计算 3 × 4\n2. 再检查", True),
        Case("12", "答え：12", True),
        Case("12", "所以一共有12个苹果。", True),
        Case("12", "$\\boxed{12个}$", True),
        Case("\\frac{1}{2}", "最终答案：$\\frac{1}{2}$", True),
        Case("12", "我来回答：一共有12个。", True),
        Case("\\frac{3}{4}", "Réponse finale : $\\frac{3}{4}$", True),
        Case("12", "Die Antwort ist 12.", True),
        Case("12", "**答案**：12", True),
        Case("12", "答案\n12", True),
        Case("-3", "答案：-3", True),
        Case("0.5", "结论：概率为0.5。", True),
        Case("12", "所以一共需要 １２ 个。", True),
        Case("C", "答案：C", True),
        Case("C", "Réponse : (C)", True),
        Case("C", "答案：D", False),
        Case("12", "答案：13\n\n1. 先计算\n2. 再检查 12", False),
        Case("12", "Réponse : 13\n\n12. Vérification", False),
    ],
    # --- what counts as equal ----------------------------------------------------------------
    "units": [Case("18", f"\\boxed{{{u}}}", True) for u in (
        "18 dollars", "\\$18", "18 \\text{ cm}", "18\\ \\mathrm{cm}", "18.00", "18 apples")]
    + [Case("2", "\\boxed{2 pi}", False)],
    "percent": [
        Case("50", "\\boxed{50\\%}", True),        # the gold left the % sign out
        Case("50\\%", "\\boxed{50}", True),        # the model left it out
        Case("50\\%", "\\boxed{0.5}", True),       # the fraction a percentage stands for
        Case("0.5", "\\boxed{50\\%}", True),
        Case("12.5", "\\boxed{12.5\\%}", True,
             why="a gold that left the % sign out: math-verify equates 50% with 50 but not 12.5% with 12.5"),
        Case("12.5\\%", "\\boxed{12.5}", True,
             why="the model left the % sign out: math-verify equates 50 with 50% but not 12.5 with 12.5%"),
        Case("0.5", "\\boxed{50}\\%", True),
        Case("50", "\\boxed{0.5}", False),         # a bare number is taken at its value
        Case("50", "\\boxed{0.5\\%}", False),
    ],
    "equivalent": [Case(g, f"\\boxed{{{p}}}", True) for g, p in (
        ("0.5", "\\frac{1}{2}"), ("\\frac12", "0.5"), ("\\frac{1}{2}", "1/2"), ("1000", "1,000"),
        ("[1,3)", "[1, 3)"), ("\\{2,1\\}", "\\{1,2\\}"), ("C", "\\mathrm{C}"), ("3", "x = 3"))],
    "math500": [Case(g, _BOXED.format(eq), True) for g, eq, _ in MATH500]
    + [Case(g, _BOXED.format(wrong), False) for g, _, wrong in MATH500],
    "gsm8k": [
        Case("18", "She makes \\boxed{\\$18} a day.", True),
        Case(GSM8K_RAW, "She makes \\boxed{\\$18} a day.", True,
             why="a raw GSM8K solution as the gold: distill takes the number after ####; "
                 "math-verify parses the whole solution"),
    ],
    "currency_gold": [
        Case("\\$10", "\\boxed{10}", True, why=_CURRENCY),
        Case("\\$10", "The answer is $10.", True, why=_CURRENCY),
        Case("\\$10", "\\boxed{11}", False),
    ],
    # A list of equations with \pm: parsed part by part, not null and not its last number (point 8).
    "pm_equations": [
        Case("x = \\pm 2, y = \\pm 3", "\\boxed{x = \\pm 2, y = \\pm 3}", True),
        Case("x = \\pm 2, y = \\pm 3", "\\boxed{y = \\pm 3, x = \\pm 2}", True),
        Case("x = \\pm 2, y = \\pm 3", "\\boxed{x = \\pm 2 \\text{ and } y = \\pm 3}", True),
        Case("x = \\pm a, y = \\pm b", "\\boxed{x = \\pm a, y = \\pm b}", True),
        Case("x = \\pm \\sqrt{2},\\ y = \\pm 1", "\\boxed{x = \\pm\\sqrt{2}, y = \\pm 1}", True),
        Case("x = \\pm 2, y = \\pm 3", "\\boxed{3}", False),
        Case("x = \\pm 2, y = \\pm 3", "\\boxed{x = \\pm 2, y = \\pm 4}", False),
        Case("x = 1 \\pm \\sqrt{2}", "\\boxed{x = 1 \\pm \\sqrt{2}}", True),
        Case("x = \\pm 1", "\\boxed{x = 1, x = -1}", True),
        Case("x = \\pm 2, y = \\pm 3", "\\boxed{x = \\pm 2}, \\boxed{y = \\pm 3}", True),
    ],
    # Exact quantities are compared exactly, not with math-verify's tolerance (issue 13, point 8).
    "exact_tiny_huge": [
        Case("\\frac{1}{100!}", "\\boxed{\\frac{1}{101!}}", False),
        Case("\\frac{1}{100!}", "\\boxed{\\frac{1}{100!}}", True),
        Case("\\frac{1}{100!}", "\\boxed{\\frac{101}{101!}}", True),
        Case("0", "\\boxed{\\frac{1}{100!}}", False),
        Case("10^{-30}", "\\boxed{2 \\cdot 10^{-30}}", False),
        Case("10^{30}", "\\boxed{10^{30} + 1}", False),
        Case("2^{-100}", "\\boxed{\\frac{1}{2^{100}}}", True),
        Case("\\left(\\frac{1}{100!}, 1\\right)", "\\boxed{\\left(\\frac{1}{101!}, 1\\right)}", False),
        Case("x = \\frac{1}{100!}", "\\boxed{x = \\frac{1}{101!}}", False),
        Case("10^{-100}", "\\boxed{\\frac{1}{10^{100} + 1}}", False),   # equal to 50 digits, settled exactly
        Case("(10^{7})!", "\\boxed{1 \\cdot (10^{7})!}", True),           # too big to compute: no hang
        Case("\\sqrt{2} + \\sqrt{3}", "\\boxed{\\sqrt{5 + 2\\sqrt{6}}}", True),
        Case("\\sqrt{2} + \\sqrt{3}", "\\boxed{\\sqrt{2} + \\sqrt{3} + 10^{-60}}", False),
        Case("\\binom{100}{50}", "\\boxed{100891344545564193334812497257}", False),
        Case("\\binom{100}{50}", "\\boxed{100891344545564193334812497256}", True),
        Case("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", True),
        Case("\\log_2 8", "\\boxed{3}", True),
        Case("\\frac{1}{3}", "\\boxed{0.333333}", True),   # a decimal keeps math-verify's tolerance
    ],
    "unparseable_gold": [
        Case("\\frac{", "\\boxed{3}", None, why=_NULL),
        Case("x^2+", "\\boxed{3}", None, why=_NULL),
    ],
}


def all_cases() -> list[tuple[str, Case]]:
    return [(cls, case) for cls, cases in CASES.items() for case in cases]
