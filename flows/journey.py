"""The `journeys` step: journey rows (kind = 'journey') built from one run's wrong and right samples.

template: a wrong path, a reflection grounded in the verifier's finding, a verified-correct sample.
teacher:  the teacher is shown a wrong path and asked to find the mistake and go on; the continuation
          is verified. A wrong continuation becomes the next wrong branch and the teacher is asked
          again, up to `journey_max_wrong` wrong branches; then the journey is stored as rejected.

All rows, kept and rejected, go to `<warehouse>/traces/run_id=<run>/journey-<mode>.parquet` and the
`journeys` view; the run record gets the counts.

A rebuild merges, never replaces: a journey's id is known before it is built (its mode, the samples
it starts from, what the teacher is asked with), so a journey already stored is kept as stored and
costs no teacher call; only those that ended in `teacher_error` are asked again, and stored rows that
are no longer candidates (a lower per-problem cap, say) stay. Teacher mode saves finished journeys
after every batch, as checkpoint files in `run_id=<run>/.journey-<mode>/` (out of the views' sight);
the end of the build compacts them into `journey-<mode>.parquet`, and a build after a crash reads them
first. So a kill loses at most the batch in flight. Why checkpoints and not a rewrite of the one
file after each batch: that rewrite grows with every batch (quadratic over a build of long chains of
thought), a checkpoint costs only its batch; and readers keep seeing one file per run and mode, whole.
"""
import fcntl
import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from distill.generators import teacher_for
from distill.flows.recipe import Recipe
from distill.generators.base import SamplingConfig
from distill.verifiers import verify_batch
from distill.warehouse.export import question_of
from distill.warehouse.journey import (cut_wrong_path, eligible_wrong, journey_id, journey_trace, teacher_messages,
                               template_journeys)
from distill.warehouse.schema import THINK_CLOSE, Trace, from_table, split_think
from distill.warehouse.store import Warehouse
from distill.errors import DistillError
from distill.files import remove_leftovers

MODES = ("template", "teacher")
BATCH = 64  # wrong paths per teacher call; finished journeys are saved after each batch



def build_journeys(recipe: Recipe, run_id: str, mode: str | None = None, *, max_wrong: int | None = None,
                   per_problem: int | None = None, batch: int = BATCH) -> dict:
    """Build, store and count one run's journeys; returns the counts (also written to the run record)."""
    mode = mode or recipe.journeys.journey
    if mode not in MODES:
        raise DistillError(f"journey mode must be template or teacher, got {mode!r}")
    if batch < 1:
        raise DistillError(f"journey batch must be >= 1, got {batch}")
    max_wrong = max_wrong or recipe.journeys.journey_max_wrong
    per_problem = per_problem or recipe.journeys.journey_per_problem
    wh = Warehouse(recipe.execution.warehouse)
    wh.refresh_if_writable()
    cols, rows = wh.query("SELECT * FROM traces WHERE run_id = ? AND kind = 'sample' "
                          "ORDER BY problem_id, sample_index", [run_id])
    rows = [dict(zip(cols, r)) for r in rows]
    if not rows:
        raise DistillError(f"run {run_id!r} has no samples in {wh.root} (see `distill runs`)")
    started = time.time()
    with _building(wh, run_id, mode) as save:
        stored = stored_journeys(wh, run_id, mode)
        run = wh.read_run(run_id)
        if run is not None and mode in (run.get("journeys") or {}):
            # until this build ends, the record does not say these journeys are done: a rerun after a
            # crash (`distill run` looks here) builds them again, from what is stored
            del run["journeys"][mode]
            wh.write_run(run)
        if mode == "template":
            built = template_journeys(rows, max_wrong, per_problem)  # no teacher: cheap to make again
            fresh, rounds, candidates = [t for t in built if _redo(stored.get(t.trace_id))], [], len(built)
        else:
            fresh, rounds, candidates = teacher_journeys(recipe, rows, max_wrong, per_problem, stored, batch,
                                                         save=save)
        merged = _merge(stored, fresh)
        traces = [merged[k] for k in sorted(merged)]
        wh.write_journeys(run_id, mode, traces)
        for rel in wh.journey_checkpoints(run_id, mode):  # compacted into the file just written
            wh.storage.delete(rel)
    costs = [t.cost_usd for t in traces]
    stats = {"mode": mode, "max_wrong": max_wrong, "per_problem": per_problem,
             "problems_with_wrong": len({t["problem_id"] for t in rows if t["correct"] is False}),
             "candidates": candidates, "reused": candidates - len(fresh), "built": len(fresh),
             "asked": sum(r["asked"] for r in rounds),
             "journeys": len(traces), "kept": sum(1 for t in traces if t.kept),
             "problems_kept": len({t.problem_id for t in traces if t.kept}),
             "rejected": _count(t.rejected_by for t in traces if not t.kept),
             "rounds": rounds, "completion_tokens": sum(t.completion_tokens or 0 for t in traces),
             "cost_usd": None if any(c is None for c in costs) else round(sum(costs), 6),
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


@contextmanager
def _building(wh: Warehouse, run_id: str, mode: str):
    """One build of a run's journeys of one mode at a time; yields a function that stores a batch.

    Two builders would each write the file from what they read, and the last would drop the other's
    rows. In a local warehouse the lock is the kernel's (flock): a killed builder never leaves it held.
    Object storage has no lock: build a run's journeys from one place (the run's last worker does).
    """
    def save(traces: list[Trace]) -> None:  # finished journeys of one batch, each batch a file written whole
        if traces:
            wh.write_journey_checkpoint(run_id, mode, traces)

    if not wh.local:
        yield save
        return
    folder = Path(wh.journey_path(run_id, mode)).parent / f".journey-{mode}"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DistillError(f"{mode} journeys of run {run_id!r} are being built by another process: "
                               "wait for it to end") from None
        # temporary files of a killed write (ours: we hold the lock) hold nothing a reader needs; the
        # pattern matches distill.files' names (`.tmp-journey-<mode>.parquet-<random>.partial`) and older ones
        remove_leftovers(folder)
        remove_leftovers(folder.parent, f".tmp-journey-{mode}.parquet*")
        try:
            yield save
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def stored_journeys(wh: Warehouse, run_id: str, mode: str) -> dict[str, Trace]:
    """The journey rows stored for a run and mode by id: the compacted file, then checkpoints left by a
    build that did not finish, oldest first."""
    out = _merge({}, wh.read_journeys(run_id, mode))
    for rel in wh.journey_checkpoints(run_id, mode):
        out = _merge(out, from_table(wh.storage.read_parquet(rel)))
    return out


def _redo(stored: Trace | None) -> bool:
    """Whether a candidate journey must be built: not stored, or stored as a teacher error."""
    return stored is None or stored.rejected_by == "teacher_error"


def _merge(stored: dict[str, Trace], new: list[Trace]) -> dict[str, Trace]:
    """Stored rows by id with new ones over them, except that a teacher error never replaces a journey
    that got an answer."""
    out = dict(stored)
    for t in new:
        old = out.get(t.trace_id)
        if old is None or t.rejected_by != "teacher_error" or old.rejected_by == "teacher_error":
            out[t.trace_id] = t
    return out


def _prompt_key(recipe: Recipe) -> str:
    """What the teacher is shown around a wrong path: a different prompt makes different journeys."""
    key = json.dumps([recipe.prompt.system_prompt, recipe.journeys.journey_prompt, recipe.journeys.journey_few_shot], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def teacher_journeys(recipe: Recipe, rows: list[dict], max_wrong: int, per_problem: int,
                     stored: dict[str, Trace] | None = None, batch: int = BATCH,
                     save=None) -> tuple[list[Trace], list, int]:
    """Teacher mode over one run's sample rows: the journeys not already stored (or stored as teacher
    errors), batch by batch, each batch through all its rounds before the next, `save(rows)` after
    each. Returns the rows built, per-round counts and how many journeys were candidates."""
    stored = stored or {}
    meta = {"max_wrong": max_wrong, "n": recipe.journeys.journey_n, "temperature": recipe.sampling.temperature, "top_p": recipe.sampling.top_p,
            "max_tokens": recipe.sampling.max_tokens, "seed": recipe.sampling.seed, "stop": list(recipe.sampling.stop), "teacher": recipe.teacher.model,
            "prompt": _prompt_key(recipe)}
    by_problem: dict[str, list[dict]] = {}
    for t in rows:
        by_problem.setdefault(t["problem_id"], []).append(t)
    candidates, pending = 0, []
    for group in by_problem.values():
        for i, w in enumerate(eligible_wrong(group)[:per_problem]):
            candidates += 1
            jid = journey_id("teacher", [w["trace_id"]], meta)
            if _redo(stored.get(jid)):
                pending.append({"id": jid, "base": w, "index": i,
                                "path": [cut_wrong_path(w["reasoning"], w["extracted_answer"])],
                                "tokens": 0, "prompt_tokens": 0, "latency": 0.0})
    if not pending:
        return [], [], candidates
    backend = recipe.backend_name()
    sampling = SamplingConfig(n=recipe.journeys.journey_n, temperature=recipe.sampling.temperature, top_p=recipe.sampling.top_p,
                              max_tokens=recipe.sampling.max_tokens, seed=recipe.sampling.seed, stop=list(recipe.sampling.stop))
    teacher, lock = teacher_for(backend, recipe.teacher_settings())
    out: list[Trace] = []
    rounds: dict[int, dict] = {}
    with tqdm(total=len(pending), desc="journeys", unit="journey", disable=None) as bar:
        for b in range(0, len(pending), batch):
            todo, done = pending[b:b + batch], []
            for rnd in range(1, max_wrong + 1):
                if not todo:
                    break
                prompts = [teacher_messages(j["base"].get("question") or question_of(j["base"]["prompt"]),
                                            "\n\n".join(j["path"]), system_prompt=recipe.prompt.system_prompt,
                                            few_shot=recipe.journeys.journey_few_shot, prompt=recipe.journeys.journey_prompt)
                           for j in todo]
                with lock:
                    samples = teacher.generate(prompts, sampling)
                finished, todo = _round(recipe, backend, meta, todo, samples, last=rnd == max_wrong)
                done += finished
                r = rounds.setdefault(rnd, {"round": rnd, "asked": 0, "kept": 0, "again": 0})
                r["asked"] += len(prompts)
                r["kept"] += sum(1 for t in finished if t.kept)
                r["again"] += len(todo)
            if save is not None:
                save(done)  # before the next batch: a kill from here on does not lose these
            out += done
            bar.update(len(pending[b:b + batch]))
    return sorted(out, key=lambda t: t.trace_id), [rounds[k] for k in sorted(rounds)], candidates


def _round(recipe: Recipe, backend: str, meta: dict, todo: list[dict], samples: list[list],
           last: bool) -> tuple[list[Trace], list[dict]]:
    """Verify one round's continuations: (journeys that ended, journeys to ask again)."""
    flat = verify_batch(recipe.selection.verifier, [(s.text, j["base"]["reference"]) for j, outs in zip(todo, samples)
                                          for s in outs])
    ended, again, k = [], [], 0
    for j, outs in zip(todo, samples):
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
        if why == "wrong_answer" and not last:
            j["path"].append(cut_wrong_path(reasoning, v.extracted))  # the next wrong branch
            again.append(j)
            continue
        ended.append(_teacher_row(j, recipe, backend, meta, "\n\n".join([*j["path"], reasoning]), answer,
                                  s.finish_reason, v, why))
    return ended, again


def _teacher_row(j: dict, recipe: Recipe, backend: str, meta: dict, reasoning: str, answer: str,
                 finish_reason: str | None, verdict, why: str | None) -> Trace:
    base = j["base"]
    pin, pout = recipe.serving.price_input_per_mtok, recipe.serving.price_output_per_mtok
    # every round's samples were paid for, the ones not picked too (as flows.generate.build_traces costs samples)
    cost = None if pin is None or pout is None else (j["prompt_tokens"] * pin + j["tokens"] * pout) / 1e6
    t = journey_trace(
        base, mode="teacher", parents=[base["trace_id"]], sample_index=j["index"], reasoning=reasoning,
        answer=answer, sampling=meta, outcome={"branches": len(j["path"])}, teacher=recipe.teacher.model, backend=backend,
        finish_reason=finish_reason, correct=verdict.correct, verifier=recipe.selection.verifier,
        verdict_reason=verdict.reason, extracted=verdict.extracted, rejected_by=why,
        completion_tokens=j["tokens"], prompt_tokens=j["prompt_tokens"], latency_s=j["latency"], cost_usd=cost)
    assert t.trace_id == j["id"], "a journey's id must be the one known before it was built"
    return t


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
        raise DistillError(f"unknown run {run_id!r} in {Warehouse(root).root} (see `distill runs`)")
    fields = {k: v for k, v in run["recipe"].items() if k in Recipe.key_names()}  # a key since removed is ignored
    return Recipe.build({**fields, "warehouse": str(root)})
