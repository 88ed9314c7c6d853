"""Never pay twice, measured: what reruns cost the teacher, against the first run of the same data.

    .venv/bin/python benchmarks/rerun.py [--problems 48] [--backend vllm] [--n 4]

`distill run` as a user runs it (a subprocess per call) on the embedded model, default recipe, over
a JSONL file of addition problems. First run; then reruns with
  (a) a new filter threshold  (another run id: samples copied from the first run),
  (b) new concurrency         (the same run: nothing to do),
  (c) 10% new problems inserted at the top of the file (the same run: only the new problems).
Prints the teacher's completion tokens per rerun as a share of the first run's (targets: 0%, 0%,
<= 10%) and each call's wall time as a ratio of the first run's, read from the run records.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def problems(count: int, seed: int) -> list[dict]:
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < count:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        if (a, b) not in seen:
            seen.add((a, b))
            out.append({"question": f"What is {a} + {b}?", "answer": str(a + b)})
    return out


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def distill(wh: Path, data: Path, *sets: str) -> tuple[dict, float]:
    """One `distill run`; returns this call's entry of the run record and the command's wall time."""
    args = [sys.executable, "-m", "distill.flows.cli", "run", "recipes/default.yaml", "--warehouse", str(wh),
            "--set", f"dataset={data}", *[x for s in sets for x in ("--set", s)]]
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"distill run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    newest = max((wh / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(newest.read_text())["calls"][-1], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=48, help="problems in the first run")
    ap.add_argument("--n", type=int, default=4, help="samples per problem")
    ap.add_argument("--backend", default="vllm", help="vllm | transformers")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, wh = tmp / "problems.jsonl", tmp / "wh"
        rows = problems(args.problems + max(1, args.problems // 10), seed=0)
        first_rows, extra = rows[:args.problems], rows[args.problems:]
        write(data, first_rows)
        common = (f"backend={args.backend}", f"n={args.n}")
        calls = [("first run", *distill(wh, data, *common))]
        calls.append(("(a) new filter threshold", *distill(
            wh, data, *common, "filters=[truncation, rejection, {length: {max_tokens: 40}}]")))
        calls.append(("(b) new concurrency", *distill(wh, data, *common, "concurrency=256", "parallel_shards=1")))
        write(data, extra + first_rows)  # 10% new problems at the top of the file
        calls.append(("(c) 10% new problems at the top", *distill(wh, data, *common)))
    base_tokens, base_wall = calls[0][1]["completion_tokens"], calls[0][2]
    print(f"{'call':34} {'generated':>9} {'reused':>7} {'tokens':>7} {'tokens vs first':>15} {'wall s':>7} "
          f"{'wall vs first':>13}")
    for name, call, wall in calls:
        share = call["completion_tokens"] / base_tokens if base_tokens else float("nan")
        print(f"{name:34} {call['generated']:>9} {call['reused']:>7} {call['completion_tokens']:>7} {share:>15.1%} "
              f"{wall:>7.1f} {wall / base_wall:>13.2f}")
    print(f"targets: (a) 0%, (b) 0%, (c) <= {len(extra) / args.problems:.0%} of the first run's tokens "
          f"({len(extra)} new problems of {args.problems})")


if __name__ == "__main__":
    main()
