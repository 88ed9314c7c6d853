"""The `journeys` step: journey rows (kind = 'journey') built from one run's wrong and right samples.

template: a wrong path, a reflection grounded in the verifier's finding, a verified-correct sample.
teacher:  the teacher is shown a wrong path and asked to find the mistake and go on; the continuation
          is verified. A wrong continuation becomes the next wrong branch and the teacher is asked
          again, up to `journey_max_wrong` wrong branches; then the journey is stored as rejected.

All rows, kept and rejected, go to `<warehouse>/traces/run_id=<run>/journey-<mode>.parquet` and the
`journeys` view; the run record gets the counts. A rebuild replaces the file (same ids for the same
inputs and sampling), so it is safe to rerun.
"""
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from flows.generate import backend_for, teacher_for
from flows.recipe import Recipe
from generators.base import SamplingConfig
from verifiers import verify_batch
from warehouse.export import question_of
from warehouse.journey import (cut_wrong_path, eligible_wrong, journey_trace, teacher_messages, template_journeys)
from warehouse.schema import THINK_CLOSE, Trace, split_think
from warehouse.store import Warehouse

MODES = ("template", "teacher")
BATCH = 64  # prompts per teacher call: the progress bar moves per batch


class JourneyError(ValueError):
    """A journey build that cannot run: unknown run, no samples, bad mode."""


def build_journeys(recipe: Recipe, run_id: str, mode: str | None = None, *, max_wrong: int | None = None,
                   per_problem: int | None = None) -> dict:
    """Build, store and count one run's journeys; returns the counts (also written to the run record)."""
    mode = mode or recipe.journey
    if mode not in MODES:
        raise JourneyError(f"journey mode must be template or teacher, got {mode!r}")
    max_wrong = max_wrong or recipe.journey_max_wrong
    per_problem = per_problem or recipe.journey_per_problem
    wh = Warehouse(recipe.warehouse)
    wh.refresh_if_writable()
    cols, rows = wh.query("SELECT * FROM traces WHERE run_id = ? AND kind = 'sample' "
                          "ORDER BY problem_id, sample_index", [run_id])
    rows = [dict(zip(cols, r)) for r in rows]
    if not rows:
        raise JourneyError(f"run {run_id!r} has no samples in {wh.root} (see `distill runs`)")
    started = time.time()
    if mode == "template":
        traces, rounds = template_journeys(rows, max_wrong, per_problem), []
    else:
        traces, rounds = teacher_journeys(recipe, rows, max_wrong, per_problem)
    wh.write_journeys(run_id, mode, traces)
    stats = {"mode": mode, "max_wrong": max_wrong, "per_problem": per_problem,
             "problems_with_wrong": len({t["problem_id"] for t in rows if t["correct"] is False}),
             "journeys": len(traces), "kept": sum(1 for t in traces if t.kept),
             "problems_kept": len({t.problem_id for t in traces if t.kept}),
             "rejected": _count(t.rejected_by for t in traces if not t.kept),
             "rounds": rounds, "completion_tokens": sum(t.completion_tokens or 0 for t in traces),
             "seconds": round(time.time() - started, 1)}
    run = wh.read_run(run_id)
    if run is not None:
        run.setdefault("journeys", {})[mode] = stats
        wh.write_run(run)
    wh.refresh()
    return stats


@task(name="journeys", cache_policy=NO_CACHE)
def journeys_task(recipe: Recipe, run_id: str) -> dict:
    return build_journeys(recipe, run_id)


def teacher_journeys(recipe: Recipe, rows: list[dict], max_wrong: int, per_problem: int) -> tuple[list[Trace], list]:
    """Teacher mode over one run's sample rows. Returns the journey rows and per-round counts."""
    by_problem: dict[str, list[dict]] = {}
    for t in rows:
        by_problem.setdefault(t["problem_id"], []).append(t)
    pending = []
    for group in by_problem.values():
        for i, w in enumerate(eligible_wrong(group)[:per_problem]):
            pending.append({"base": w, "index": i, "path": [cut_wrong_path(w["reasoning"], w["extracted_answer"])],
                            "tokens": 0, "prompt_tokens": 0, "latency": 0.0})
    backend = backend_for(recipe)
    sampling = SamplingConfig(n=recipe.journey_n, temperature=recipe.temperature, top_p=recipe.top_p,
                              max_tokens=recipe.max_tokens, seed=recipe.seed, stop=list(recipe.stop))
    meta = {"max_wrong": max_wrong, "n": recipe.journey_n, "temperature": recipe.temperature, "top_p": recipe.top_p,
            "max_tokens": recipe.max_tokens, "seed": recipe.seed}
    out, rounds = [], []
    teacher, lock = teacher_for(recipe, backend, {}) if pending else (None, None)
    for rnd in range(1, max_wrong + 1):
        if not pending:
            break
        samples: list[list] = []
        with tqdm(total=len(pending), desc=f"journeys (round {rnd})", unit="path", disable=None) as bar:
            for i in range(0, len(pending), BATCH):
                batch = pending[i:i + BATCH]
                prompts = [teacher_messages(question_of(j["base"]["prompt"]), "\n\n".join(j["path"]),
                                            system_prompt=recipe.system_prompt, few_shot=recipe.journey_few_shot,
                                            prompt=recipe.journey_prompt) for j in batch]
                with lock:
                    samples += teacher.generate(prompts, sampling)
                bar.update(len(batch))
        flat = verify_batch(recipe.verifier, [(s.text, j["base"]["reference"])
                                              for j, outs in zip(pending, samples) for s in outs])
        nxt, kept, k = [], 0, 0
        for j, outs in zip(pending, samples):
            verdicts, k = flat[k:k + len(outs)], k + len(outs)
            for s in outs:
                j["tokens"] += s.completion_tokens or 0
                j["prompt_tokens"] += s.prompt_tokens or 0
                j["latency"] += s.latency_s or 0.0
            # the verifier picks: the first continuation that verifies, else the first complete wrong one
            whys = [_reason(s, v) for s, v in zip(outs, verdicts)]
            pick = next((i for i, w in enumerate(whys) if w is None), None)
            if pick is None:
                pick = next((i for i, w in enumerate(whys) if w == "wrong_answer"), 0)
            s, v, why = outs[pick], verdicts[pick], whys[pick]
            reasoning, answer = split_think(s.text)
            if why == "wrong_answer" and rnd < max_wrong:
                j["path"].append(cut_wrong_path(reasoning, v.extracted))  # the next wrong branch
                nxt.append(j)
                continue
            kept += why is None
            out.append(_teacher_row(j, recipe, backend, meta, "\n\n".join([*j["path"], reasoning]), answer,
                                    s.finish_reason, v, why))
        rounds.append({"round": rnd, "asked": len(pending), "kept": kept, "again": len(nxt)})
        pending = nxt
    return sorted(out, key=lambda t: t.trace_id), rounds


def _teacher_row(j: dict, recipe: Recipe, backend: str, meta: dict, reasoning: str, answer: str,
                 finish_reason: str | None, verdict, why: str | None) -> Trace:
    base = j["base"]
    return journey_trace(
        base, mode="teacher", parents=[base["trace_id"]], sample_index=j["index"], reasoning=reasoning,
        answer=answer, sampling={**meta, "branches": len(j["path"])}, teacher=recipe.model, backend=backend,
        finish_reason=finish_reason, correct=verdict.correct, verifier=recipe.verifier,
        verdict_reason=verdict.reason, extracted=verdict.extracted, rejected_by=why,
        completion_tokens=j["tokens"], prompt_tokens=j["prompt_tokens"], latency_s=j["latency"])


def _reason(sample, verdict) -> str | None:
    """Why a continuation cannot end a journey (None: it can)."""
    if sample.finish_reason == "error":
        return "teacher_error"
    if sample.finish_reason == "length":
        return "truncated"
    if THINK_CLOSE not in sample.text:
        return "no_think_close"  # the continuation never ends its reasoning: no place for the answer
    return None if verdict.correct else "wrong_answer"


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def recipe_of_run(root: str | Path, run_id: str) -> Recipe:
    """The recipe a stored run was made with (its run record keeps it), pointed at `root`."""
    run = Warehouse(root).read_run(run_id)
    if run is None:
        raise JourneyError(f"unknown run {run_id!r} in {Path(root).absolute()} (see `distill runs`)")
    fields = {k: v for k, v in run["recipe"].items() if k in Recipe.__dataclass_fields__}
    return Recipe(**{**fields, "warehouse": str(root)})
