"""Verification and filtering throughput, against a one-process baseline measured in the same run.

    .venv/bin/python benchmarks/verify.py [--traces 4000] [--workers 2]

Synthetic long-CoT-shaped traces (a few hundred words of reasoning, then a boxed answer; a third of
them wrong, some with answers in other forms: fractions, decimals, LaTeX) are verified with the
`math` verifier (1) inline in one process, the baseline, and (2) through `verify_batch` on worker
processes; then the recipe's full filter chain is timed. Prints traces/s and ratios.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from distill import filters  # noqa: E402
from distill.filters.selection import select_per_problem  # noqa: E402
from distill.verifiers import get_verifier, verify_batch  # noqa: E402
from distill.warehouse.schema import Trace, split_think  # noqa: E402

WORDS = "so we add the tens and then the ones carefully check each step again because".split()


def make_cases(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        gold = a + b
        form = i % 6
        shown = gold if i % 3 else gold + rng.randint(1, 9)  # a third are wrong
        answer = {0: f"\\boxed{{{shown}}}", 1: f"\\boxed{{{shown}.0}}", 2: f"\\boxed{{\\frac{{{2 * shown}}}{{2}}}}",
                  3: f"The answer is {shown}.", 4: f"\\boxed{{{shown}}} dollars", 5: f"$\\boxed{{{shown}}}$"}[form]
        reasoning = " ".join(rng.choice(WORDS) for _ in range(rng.randint(150, 400)))
        cases.append((f"<think>{a} + {b}. {reasoning}</think>\n{answer}", str(gold)))
    return cases


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:10,.0f} traces/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    cases = make_cases(args.traces)
    fn = get_verifier("math")

    fn(*cases[0])  # imports and first-parse costs are not throughput
    t = time.perf_counter()
    baseline = [fn(c, r) for c, r in cases]
    base_s = time.perf_counter() - t

    t = time.perf_counter()
    verify_batch("math", cases[:2 * args.workers], workers=args.workers, chunk=1)  # start the workers
    start_s = time.perf_counter() - t
    t = time.perf_counter()
    pooled = verify_batch("math", cases, workers=args.workers, chunk=max(64, args.traces // (4 * args.workers)))
    pool_s = time.perf_counter() - t
    assert [v.correct for v in pooled] == [v.correct for v in baseline], "the pool changed verdicts"

    traces = []
    for i, ((completion, ref), v) in enumerate(zip(cases, baseline)):
        reasoning, answer = split_think(completion)
        traces.append(Trace(trace_id=str(i), run_id="bench", problem_id=str(i // 4), sample_index=i % 4,
                            source="bench", domain="math", prompt=[{"role": "user", "content": "q"}],
                            reference=ref, teacher="m", backend="b", sampling="{}", completion=completion,
                            reasoning=reasoning, answer=answer, finish_reason="stop",
                            completion_tokens=len(completion.split()), correct=v.correct))
    chain_names = [n for n in filters.FILTERS if n != "decontam"]
    chain = [filters.make_filter(n) for n in chain_names]
    t = time.perf_counter()
    filters.apply_filters(traces, chain)
    select_per_problem(traces, keep_per_problem=2, prefer="shortest")
    chain_s = time.perf_counter() - t

    correct = sum(1 for v in baseline if v.correct)
    print(f"{args.traces} traces ({correct} correct), {os.cpu_count()} cores, {args.workers} workers")
    print(f"math verifier, one process (baseline)   {rate(args.traces, base_s)}   1.00x")
    print(f"math verifier, verify_batch             {rate(args.traces, pool_s)}   {base_s / pool_s:.2f}x  "
          f"({args.traces / pool_s / args.workers:,.0f} traces/s per worker; start-up {start_s:.1f} s, once per run)")
    print(f"filter chain [{', '.join(chain_names)}] + per-problem selection, one process")
    print(f"                                        {rate(args.traces, chain_s)}")
    print(f"per core: math {args.traces / base_s:,.0f} traces/s, filters {args.traces / chain_s:,.0f} traces/s "
          f"(target >= 1,000 each); both on one core {args.traces / (base_s + chain_s):,.0f} traces/s")

if __name__ == "__main__":
    main()
