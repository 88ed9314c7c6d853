"""Evaluation: pass@1 averaged over n samples, and maj@k (self-consistency voting), with the verifiers
the data was filtered with. Results go to `<warehouse>/evals/<eval_id>.json` (the `evals` view).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from statistics import NormalDist

import numpy as np
from tqdm import tqdm

from distill.generators import make_teacher
from distill.generators.base import SamplingConfig, build_messages
from distill.generators.models import resolve_model
from distill.generators.problems import Problem, load_problems
from distill.verifiers import Verdict, verify_batch
from distill.files import remove_leftovers

EVAL_BATCH = 32  # problems per generate call

# Benchmarks by name: files that ship with distill (recipes/data) or a built-in task. Anything else
# given to --benchmark is read as a dataset (file or Hub id) with --question-field/--answer-field.
DATA = Path(__file__).resolve().parents[1] / "recipes" / "data"
BENCHMARKS = {
    "gsm8k": {"dataset": str(DATA / "gsm8k-test-50.jsonl"), "question_field": "question", "answer_field": "answer"},
    "math500": {"dataset": str(DATA / "math500-test-50.jsonl"), "question_field": "problem", "answer_field": "answer"},
    # held out from the default recipe's problems (seed 0): another seed, and two-digit sums only
    "addition": {"dataset": "builtin:addition", "options": {"count": 40, "digits": [1, 2], "seed": 1}},
}


@dataclass
class EvalResult:
    eval_id: str
    model: str
    benchmark: str
    problems: int
    n: int
    k: int
    pass_at_1: float
    pass_at_1_ci: tuple[float, float]
    maj_at_k: float
    maj_at_k_ci: tuple[float, float]
    boxed_rate: float
    strict_pass_at_1: float  # correct and the answer in \boxed{}: FACTS.md's strict check
    strict_pass_at_1_ci: tuple[float, float]
    per_problem: list[dict]
    completion_tokens: int | None = None  # every sample's, summed: the answers' inference compute


def majority(votes: list[tuple[str | None, bool | None]]) -> bool | None:
    """maj@k for one problem: the most common extracted answer (first seen wins a tie) and its verdict.

    `votes` are (extracted answer, correct) per sample; samples with no answer do not vote. No votes:
    False. The winning answer's verdict is that of its first sample (equal answers, equal verdicts).
    """
    answers = [a for a, _ in votes if a is not None]
    if not answers:
        return False
    counts = Counter(answers)
    best = max(counts.values())
    winner = next(a for a in answers if counts[a] == best)
    return next(c for a, c in votes if a == winner)


Z95 = NormalDist().inv_cdf(0.975)  # 1.95996…


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion of `successes` out of `n` (95% by default)."""
    if n <= 0:
        return 0.0, 0.0
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def mean_ci(values: list[float]) -> tuple[float, tuple[float, float]]:
    """Mean over problems of per-problem scores in [0, 1] (maj@k: 0 or 1; pass@1: a mean over n samples)
    and its 95% Wilson interval with problems, not samples, as n: samples of one problem are not
    independent. A score in [0, 1] with mean p has variance at most p(1 - p), so for pass@1 this errs
    wide, never narrow, and unlike a bootstrap it does not shrink to a point when every problem scores 0."""
    if not values:
        return 0.0, (0.0, 0.0)
    m = sum(values) / len(values)
    return m, wilson(sum(values), len(values))


def paired_diff_ci(a: list[float], b: list[float], *, resamples: int = 10_000,
                   seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Mean of b - a over the same problems and its 95% paired bootstrap interval (percentile; problems
    resampled with replacement, seeded so the same scores give the same interval)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired values must cover the same, non-empty set of problems")
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.concatenate([d[rng.integers(0, len(d), size=(min(1000, resamples - i), len(d)))].mean(axis=1)
                            for i in range(0, resamples, 1000)])  # in blocks: bounded memory for many problems
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), (float(lo), float(hi))


def benchmark_problems(benchmark: str, limit: int | None = None, split: str = "test",
                       question_field: str = "question", answer_field: str = "answer") -> list[Problem]:
    spec = BENCHMARKS.get(benchmark)
    if spec:
        return load_problems(spec["dataset"], question_field=spec.get("question_field", "question"),
                             answer_field=spec.get("answer_field", "answer"), options=spec.get("options"),
                             limit=limit)
    return load_problems(benchmark, split=split, question_field=question_field, answer_field=answer_field,
                         limit=limit)


def eval_id_for(model: str, benchmark: str, problems: list[Problem], *, n: int, k: int, temperature: float,
                top_p: float, max_tokens: int, seed: int, system_prompt: str | None = None, few_shot: list | None = None,
                prompt_template: str = "{question}") -> str:
    """What an eval asked (the model by name, the problems, the sampling): its id, known before it runs."""
    key = json.dumps([model, benchmark, n, k, temperature, top_p, max_tokens, seed, system_prompt, few_shot,
                      *([prompt_template] if prompt_template != "{question}" else []),
                      [p.problem_id for p in problems]], sort_keys=True, default=str)
    return f"eval-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def evaluate(model: str, benchmark: str, problems: list[Problem], *, n: int = 4, k: int | None = None,
             backend: str = "auto", temperature: float = 0.6, top_p: float = 0.95, max_tokens: int = 256,
             seed: int = 0, system_prompt: str | None = None, few_shot: list | None = None,
             prompt_template: str = "{question}", verifier: str = "math", generator=None) -> EvalResult:
    k = k or n
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and n={n}, got {k}")
    own = generator is None
    if own:
        generator = make_teacher(backend, resolve_model(model), seed=seed)
    prompts = [build_messages(p.question, system_prompt, few_shot, prompt_template) for p in problems]
    sampling = SamplingConfig(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    outs = []
    try:
        # in batches, so the bar moves (with rate and ETA) on a terminal; quiet when not on one
        with tqdm(total=len(prompts), desc=f"eval {Path(model).name}", unit="problem", disable=None) as bar:
            for i in range(0, len(prompts), EVAL_BATCH):
                outs += generator.generate(prompts[i:i + EVAL_BATCH], sampling)
                bar.update(len(prompts[i:i + EVAL_BATCH]))
    finally:
        if own and hasattr(generator, "close"):
            generator.close()  # an engine holds GBs: free them before the next model loads
    pairs = [(s.text, p.reference) for p, samples in zip(problems, outs) for s in samples]
    verdicts: list[Verdict] = verify_batch(verifier, pairs)
    per_problem, i = [], 0
    for p, samples in zip(problems, outs):
        vs = verdicts[i:i + len(samples)]
        i += len(samples)
        per_problem.append({
            "problem_id": p.problem_id, "correct": sum(1 for v in vs if v.correct),
            "samples": len(vs), "maj": bool(majority([(v.extracted, v.correct) for v in vs[:k]])),
            "boxed": sum(1 for s in samples if "\\boxed" in s.text),
            "strict": sum(1 for s, v in zip(samples, vs) if v.correct and "\\boxed" in s.text),
            "texts": [s.text for s in samples],  # what the model wrote, to see why it scored so
        })
    p1, p1_ci = mean_ci([r["correct"] / r["samples"] for r in per_problem])
    mk, mk_ci = mean_ci([float(r["maj"]) for r in per_problem])
    boxed = sum(r["boxed"] for r in per_problem) / max(1, sum(r["samples"] for r in per_problem))
    strict, strict_ci = mean_ci([r["strict"] / r["samples"] for r in per_problem])
    eval_id = eval_id_for(model, benchmark, problems, n=n, k=k, temperature=temperature, top_p=top_p,
                          max_tokens=max_tokens, seed=seed, system_prompt=system_prompt, few_shot=few_shot,
                          prompt_template=prompt_template)
    return EvalResult(eval_id, model, benchmark, len(problems), n, k, p1, p1_ci, mk, mk_ci, boxed, strict, strict_ci,
                      per_problem, sum(s.completion_tokens or 0 for samples in outs for s in samples))


def save(result: EvalResult, root: str | Path, extra: dict | None = None) -> Path | str:
    """Write `<root>/evals/<eval_id>.json` all or nothing.

    The temporary file (distill.files) ends in `.partial`, never matched by the `evals` view's
    `evals/*.json`, so a crash mid-write leaves a file no reader sees instead of a half JSON that
    breaks the view.
    """
    from distill.warehouse.store import Warehouse

    wh = Warehouse(root)
    if wh.local:
        # An older writer named its temporary file `.tmp-<eval_id>.json`: one left by a crash breaks the
        # view. No writer makes such names now, so one found here is a leftover.
        remove_leftovers(wh.storage.path / "evals", ".tmp-*.json")
    record = {**result.__dict__, **(extra or {}), "created_at": datetime.now(timezone.utc).isoformat(), "timestamp": time.time()}
    wh.storage.write_text(f"evals/{result.eval_id}.json", json.dumps(record, indent=1, default=list))
    return wh._at(f"evals/{result.eval_id}.json")
