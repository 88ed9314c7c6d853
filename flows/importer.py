"""The `import` flow: traces someone already has → verify → filter → select → store, as a run (backend `import`).

The source is streamed twice, never loaded whole:
1. plan: each row's problem, in first-appearance order, in shards of shard_size (the run's plan,
   <warehouse>/plans/<run_id>.json, extended like a generated run's: a problem never moves), and the
   position of each problem's last row;
2. store: rows are buffered per shard, and a shard is verified, filtered and stored (generate's
   finish_shard) as soon as the stream is past the last row of its problems: on data grouped by problem,
   memory holds about one shard.
A shard whose part holds its samples (same problems, same count: `shard_key`) is skipped on a rerun, so an
import stopped by a bad row or a kill -9 keeps every stored shard and a rerun after the fix does the rest.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from tqdm import tqdm

from distill.errors import DistillError
from distill.flows.dedup import global_step
from distill.flows.generate import (finish_shard, fold_shard, plan_shards, shard_key, start_record, summary_artifact,
                                    task_runner_for, write_record)
from distill.flows.logs import terminal
from distill.flows.recipe import Recipe
from distill.generators.imported import BACKEND, Importer
from distill.generators.problems import Problem
from distill.warehouse.schema import Trace
from distill.warehouse.store import Warehouse


def importer_for(recipe: Recipe, base_dir: Path | None = None) -> Importer:
    """The recipe's source (`dataset`, found relative to the recipe's folder first) as an Importer."""
    p = recipe.problems
    source = p.dataset
    if base_dir is not None and not Path(source).is_absolute() and (base_dir / source).exists():
        source = str(base_dir / source)
    return Importer(source, p.import_shape or "auto", p.import_fields, teacher=recipe.teacher.model,
                    domain=p.domain, split=p.dataset_split, config=p.dataset_config)


@task(name="import-shard", cache_policy=NO_CACHE)
def import_shard_task(recipe: Recipe, run_id: str, shard: int, problems: list[Problem], samples: list[Trace],
                      base_dir: Path | None) -> dict:
    """Verify, filter and store one shard of imported samples; rows of its part the source no longer has stay
    (rejected as removed_from_dataset when their problem is gone)."""
    wh = Warehouse(recipe.execution.warehouse)
    timings: dict[str, float] = {}
    ids = {t.trace_id for t in samples}
    existing = [t for t in wh.read_part(run_id, shard) if t.trace_id not in ids] if wh.part_exists(run_id, shard) else []
    rows, reports, judged = finish_shard(recipe, run_id, shard, problems, existing, samples, base_dir, len(samples),
                                         shard_key(problems, len(samples)), timings)
    return {"shard": shard, "samples": len(samples), "kept": sum(1 for t in rows if t.kept), "timings": timings,
            "filter_reports": reports, **judged}


@flow(name="import")
def import_traces(recipe: Recipe, run_id: str, base_dir: Path | None = None, command: str | None = None) -> dict:
    """Import (or resume importing) the recipe's source into run `run_id`; the record is a generated run's."""
    wh = Warehouse(recipe.execution.warehouse)
    started = time.time()
    timings: dict[str, float] = {}
    src = importer_for(recipe, base_dir)
    limit = recipe.problems.limit

    # Pass 1: which problems, in which order, how many samples each, and where each one's rows end.
    problems: dict[str, Problem] = {}
    counts: dict[str, int] = {}
    last_row: dict[str, int] = {}
    teachers: set[str] = set()
    rows_read, stream_error = 0, None
    t0 = time.perf_counter()
    try:
        with tqdm(desc=f"{run_id} reading", unit="row", disable=None, file=terminal()) as bar:
            for i, (row, samples) in enumerate(src.traces(run_id)):
                pid = row.problem.problem_id
                rows_read = i + 1
                bar.update(1)
                if pid not in problems:
                    if limit is not None and len(problems) >= limit:
                        continue
                    problems[pid] = row.problem
                counts[pid] = counts.get(pid, 0) + len(samples)
                last_row[pid] = i
                teachers.add(row.teacher)
    except DistillError as e:  # a bad row: the shards complete before it are still stored (pass 2), then it fails
        stream_error = e
    if not problems and stream_error is None:
        raise DistillError(f"import source {recipe.problems.dataset!r} has no rows")
    previous_plan = wh.read_plan(run_id)
    plan = plan_shards(previous_plan, list(problems), recipe.execution.shard_size)
    if plan != previous_plan:
        wh.write_plan(run_id, plan)  # before any shard is stored: the shards' contents are fixed from here
    shards = [[problems[pid] for pid in ids if pid in problems] for ids in plan]
    sizes = [sum(counts[p.problem_id] for p in s) for s in shards]
    todo = {i for i in range(len(plan))
            if (shards[i] or wh.part_exists(run_id, i)) and wh.part_missing(run_id, i, shard_key(shards[i], sizes[i])) != 0}
    shard_of = {pid: i for i, ids in enumerate(plan) for pid in ids if pid in problems}
    ends = {}  # row position → the shard that is complete once the stream is past it
    for i, s in enumerate(shards):
        if i in todo and s:
            ends[max(last_row[p.problem_id] for p in s)] = i
    timings["read"] = time.perf_counter() - t0

    shown = sorted(teachers)
    teacher = ", ".join(shown[:3]) + (f" (+{len(shown) - 3})" if len(shown) > 3 else "") if shown else recipe.teacher.model
    run, call, calls, by_shard, previous = start_record(wh, recipe, run_id, command, BACKEND, teacher, len(problems),
                                                        len(shards), len(plan) - len(todo), timings)
    run["source"] = src.source
    run["import_shape"] = src.shape
    call["rows_read"], call["peak_buffered_samples"] = rows_read, 0

    def record() -> None:
        write_record(wh, run, calls, by_shard, timings, started)

    record()
    in_flight, errors = set(), []
    bar = tqdm(total=len(todo), desc=f"{run_id} shards", unit="shard", disable=None, file=terminal())

    def collect(done) -> None:
        for fut in done:
            in_flight.discard(fut)
            try:
                counts_ = fut.result()
            except BaseException as e:  # other shards go on; their parts are kept
                errors.append(e)
                bar.update(1)
                continue
            fold_shard(counts_, by_shard, timings, call)
            record()
            bar.update(1)
            bar.set_postfix(samples=counts_["samples"], kept=counts_["kept"], refresh=False)

    def submit(i: int, samples: list[Trace]) -> None:
        if len(in_flight) >= recipe.execution.parallel_shards:  # the stream waits: memory stays O(shards in flight)
            collect([next(as_completed(list(in_flight)))])
        in_flight.add(import_shard_task.submit(recipe, run_id, i, shards[i], samples, base_dir))

    try:
        # Pass 2: the same stream, rows buffered per shard, each shard handed on once past its last row.
        buffers: dict[int, list[Trace]] = {}
        buffered = 0
        if todo:
            for pos, (row, samples) in enumerate(src.traces(run_id)):
                i = shard_of.get(row.problem.problem_id)
                if i in todo:
                    buffers.setdefault(i, []).extend(samples)
                    buffered += len(samples)
                    call["peak_buffered_samples"] = max(call["peak_buffered_samples"], buffered)
                if pos in ends:
                    done = buffers.pop(ends[pos], [])
                    buffered -= len(done)
                    submit(ends[pos], done)
                    todo.discard(ends[pos])
                if pos + 1 >= rows_read:
                    break
            if stream_error is not None:
                raise stream_error
            for i in sorted(todo):  # shards of problems no longer in the source: their rows, marked removed
                submit(i, buffers.pop(i, []))
        elif stream_error is not None:
            raise stream_error
        collect(as_completed(list(in_flight)))
        if errors:
            raise errors[0]
        run["status"] = "finished"
    except BaseException as e:
        collect(as_completed(list(in_flight)))  # the shards handed on are stored before the run says it failed
        run["status"], run["error"] = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        bar.close()
        run["finished_at"] = call["finished_at"] = datetime.now(timezone.utc).isoformat()
        call["status"] = run["status"]
        record()
        wh.refresh()
    if (decided := global_step(recipe, run_id, base_dir, previous.get("global"), call["shards_done"] > 0)) is not None:
        run["global"] = decided  # global_dedup / global_decontam, over the run's stored samples as for generate
        record()
    summary_artifact(wh, run)
    return run


def run_import(recipe: Recipe, run_id: str, base_dir: Path | None = None, command: str | None = None) -> dict:
    """The flow on the recipe's task runner (threads: imported shards are verified while the stream goes on)."""
    return import_traces.with_options(task_runner=task_runner_for(recipe))(recipe, run_id, base_dir, command)
