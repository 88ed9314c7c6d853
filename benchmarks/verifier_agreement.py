"""Agreement of distill's math verifier and plain math-verify with the expected verdicts.

    .venv/bin/python benchmarks/verifier_agreement.py [--all]

Runs over every case the math verifier's tests hold (tests/math_cases.py): distill's `math` verifier on
the whole completion, and plain math-verify (`parse`/`verify`, default settings) on the final answer,
with the gold in `$…$` ("plain") and as written ("plain, raw gold"). Prints the counts, every case
where distill and plain math-verify disagree (`--all`: every case), and each case where plain
math-verify is right and distill is wrong; exits 1 if such a case has no `why`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.math_cases import all_cases, completion, plain_math_verify  # noqa: E402
from distill.verifiers.math import verify  # noqa: E402


def show(verdict, expected) -> str:
    return f"{str(verdict).lower() if verdict is not None else 'null'} {'ok' if verdict is expected else 'WRONG'}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="print every case, not only disagreements")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # math-verify logs each timeout-less parse failure

    rows = []
    for cls, case in all_cases():
        distill = verify(completion(case), case.gold).correct
        plain = plain_math_verify(case.gold, case.answer)
        raw = plain_math_verify(case.gold, case.answer, wrap_gold=False)
        rows.append((cls, case, distill, plain, raw))

    n = len(rows)
    right = lambda i: sum(1 for r in rows if r[i] is r[1].expected)  # noqa: E731
    print(f"{n} cases; right: distill {right(2)}, plain math-verify {right(3)}, plain with raw gold {right(4)}")
    unexplained = 0
    for cls, case, distill, plain, raw in rows:
        differs = distill is not plain or distill is not raw
        plain_only = distill is not case.expected and (plain is case.expected or raw is case.expected)
        unexplained += plain_only and not case.why
        if args.all or differs or plain_only:
            mark = "PLAIN RIGHT, DISTILL WRONG" if plain_only else ""
            print(f"[{cls}] gold {case.gold!r} answer {case.answer!r}\n"
                  f"    expected {show(case.expected, case.expected)[:-3]}: distill {show(distill, case.expected)}, "
                  f"plain {show(plain, case.expected)}, raw gold {show(raw, case.expected)}  {mark}" + (f"\n    why: {case.why}" if case.why else ""))
    disagree = sum(1 for r in rows if r[2] is not r[3])
    print(f"distill vs plain math-verify: {disagree} disagreements; "
          f"plain right and distill wrong without a why: {unexplained}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
