"""Global dedup and decontamination over stored runs: read the samples, decide, store the decisions.

The stages (filters/global_dedup.py) decide over every sample of the named runs at once; the decisions
go to <warehouse>/decisions/<stage>-<hash of the run ids>.parquet, and the views overlay them (`traces`,
`accepted`, `funnel`, `filter_funnel`; `raw_traces` is the parts as written). The parts are never
rewritten, and deciding again over the same runs replaces the file. Samples are read from `raw_traces`,
so deciding again never sees its own earlier decisions.

`distill dedup` / `distill decontam` run these on any runs; a recipe's `global_dedup` / `global_decontam`
keys run them on its own run once its shards are done (`global_step`, called by the generate flow).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from distill.errors import DistillError
from distill.filters.decontam import Decontam
from distill.filters.global_dedup import DECONTAM, DEDUP, check_dedup, global_decontam, global_dedup
from distill.flows.recipe import Recipe
from distill.warehouse.store import Warehouse


def resolve_against(against: list, base_dir: Path | None) -> list:
    """Eval-set paths of a recipe (decontam's `against`), found relative to the recipe's folder first,
    like `dataset:`; else as given (relative to the working directory)."""
    def resolve(path: str) -> str:
        return str(base_dir / path) if base_dir and not Path(path).is_absolute() and (base_dir / path).exists() else path

    return [{**a, "path": resolve(a["path"])} if isinstance(a, dict) and "path" in a
            else resolve(a) if isinstance(a, str) else a for a in against]


def _runs(wh: Warehouse, run_ids: list[str]) -> list[str]:
    """The run ids, each once, sorted; a DistillError naming the first the warehouse does not hold."""
    wanted = sorted(set(run_ids))
    if not wanted:
        raise DistillError("name at least one run (see `distill runs`)")
    known = set(wh.run_ids())
    missing = [r for r in wanted if r not in known]
    if missing:  # a run whose record is gone but whose parts are there is still a run
        _, rows = wh.query(f"SELECT DISTINCT run_id FROM raw_traces WHERE run_id IN ({_marks(missing)})", missing)
        missing = [r for r in missing if r not in {row[0] for row in rows}]
    if missing:
        shown = sorted(known)
        raise DistillError(f"no run {missing[0]!r} in {wh.root} (runs: {', '.join(shown[:10]) or 'none'}"
                           f"{', …' if len(shown) > 10 else ''})")
    return wanted


def _marks(values: list) -> str:
    return ", ".join("?" * len(values))


def _open(root: str | Path) -> Warehouse:
    wh = Warehouse(root)
    wh.refresh_if_writable()  # a catalog made before the decisions views existed gets them
    return wh


def _store(wh: Warehouse, stage: str, run_ids: list[str], table: pa.Table) -> str:
    path = wh.write_decisions(stage, run_ids, table)
    if wh.local:  # object storage has no catalog: each connection lists the files
        wh.refresh()
    return str(path)


def dedup_runs(root: str | Path, run_ids: list[str], threshold: float = 0.85, scope: str = "dataset",
               workers: int = 1) -> dict:
    """Global dedup over the kept samples of these runs; stores the decisions and returns the counts:
    samples (looked at), clusters (of two or more), duplicate, near_duplicate (dropped), kept, seconds."""
    started = time.perf_counter()
    check_dedup(threshold, scope)  # before reading anything
    wh = _open(root)
    run_ids = _runs(wh, run_ids)
    # The kept samples as the parts hold them (raw_traces: never this stage's own earlier decisions), less
    # those another stage's decisions drop (decontam): a dropped sample is never the one a cluster keeps.
    _, rows = wh.query(
        "SELECT run_id, trace_id, problem_id, coalesce(nullif(reasoning, ''), completion) FROM raw_traces r "
        f"WHERE kind = 'sample' AND kept AND run_id IN ({_marks(run_ids)}) AND NOT EXISTS (SELECT 1 FROM decisions d "
        f"WHERE d.run_id = r.run_id AND d.trace_id = r.trace_id AND d.stage <> '{DEDUP}' AND NOT d.kept)", run_ids)
    table = global_dedup(rows, threshold=threshold, scope=scope, workers=workers)
    path = _store(wh, DEDUP, run_ids, table)
    kept = table.column("kept").to_pylist()
    dropped = Counter(r for r in table.column("rejected_by").to_pylist() if r)
    clusters = sum(1 for k, d in zip(kept, table.column("detail").to_pylist()) if k and d)
    return {"stage": DEDUP, "runs": run_ids, "threshold": threshold, "scope": scope, "samples": len(kept),
            "clusters": clusters, "duplicate": dropped["duplicate"], "near_duplicate": dropped["near_duplicate"],
            "kept": sum(kept), "decisions": path, "seconds": round(time.perf_counter() - started, 3)}


def decontam_runs(root: str | Path, run_ids: list[str], against: list, n: int = 13, max_share: float = 0.0) -> dict:
    """Decontamination of every sample of these runs against eval sets (decontam's `against`, `n`,
    `max_share`); stores the decisions and returns the counts: samples, problems, contaminated_problems,
    contaminated (samples of those problems), dropped (of them, those the parts kept), seconds, and the
    contaminated problems themselves (the first 100: problem_id, eval_set, eval_line, share)."""
    started = time.perf_counter()
    Decontam(against=against, n=n, max_share=max_share)  # a missing eval set fails before anything is read
    wh = _open(root)
    run_ids = _runs(wh, run_ids)
    # the problem as the decontam filter reads it: the prompt's last user message (few-shot turns never count)
    _, rows = wh.query("SELECT run_id, trace_id, problem_id, list_filter(prompt, lambda m: m.role = 'user')[-1].content, "
                       f"kept FROM raw_traces WHERE kind = 'sample' AND run_id IN ({_marks(run_ids)})", run_ids)
    table = global_decontam([r[:4] for r in rows], against=against, n=n, max_share=max_share)
    path = _store(wh, DECONTAM, run_ids, table)
    was_kept = {(r[0], r[1]): bool(r[4]) for r in rows}
    problem = {(r[0], r[1]): r[2] for r in rows}
    hits: dict[str, dict] = {}
    dropped = contaminated = 0
    for d in table.to_pylist():
        if d["kept"]:
            continue
        key = (d["run_id"], d["trace_id"])
        contaminated += 1
        dropped += was_kept[key]
        hits.setdefault(problem[key], {"problem_id": problem[key], **json.loads(d["detail"]), "share": round(d["score"], 4)})
    return {"stage": DECONTAM, "runs": run_ids, "n": n, "max_share": max_share, "samples": table.num_rows,
            "problems": len(set(problem.values())), "contaminated_problems": len(hits), "contaminated": contaminated,
            "dropped": dropped, "problems_found": [hits[p] for p in sorted(hits)][:100], "decisions": path,
            "seconds": round(time.perf_counter() - started, 3)}


@task(name="global-dedup", cache_policy=NO_CACHE)
def dedup_task(root: str, run_ids: list[str], threshold: float = 0.85, scope: str = "dataset", workers: int = 1) -> dict:
    return dedup_runs(root, run_ids, threshold=threshold, scope=scope, workers=workers)


@task(name="global-decontam", cache_policy=NO_CACHE)
def decontam_task(root: str, run_ids: list[str], against: list, n: int = 13, max_share: float = 0.0) -> dict:
    return decontam_runs(root, run_ids, against=against, n=n, max_share=max_share)


def check_global(recipe: Recipe, base_dir: Path | None) -> None:
    """A recipe's global_decontam eval sets exist and read: checked before any shard is generated."""
    if recipe.selection.global_decontam:
        opts = recipe.selection.global_decontam
        Decontam(against=resolve_against(opts["against"], base_dir), n=opts["n"], max_share=opts["max_share"])


def global_step(recipe: Recipe, run_id: str, base_dir: Path | None, previous: dict | None, changed: bool) -> dict | None:
    """The recipe's global stages over its run, once every shard is stored: {stage: counts}, for the run
    record's "global". `previous`: what an earlier call of the run recorded; kept as it is when this call
    changed no shard (`changed` false) and the decisions files are still there."""
    sel, root = recipe.selection, recipe.execution.warehouse
    if not sel.global_dedup and not sel.global_decontam:
        return None
    wanted = [s for s, on in ((DECONTAM, sel.global_decontam), (DEDUP, sel.global_dedup)) if on]
    wh = Warehouse(root)
    if (not changed and previous and set(previous) == set(wanted)
            and all(wh.storage.exists(Warehouse.decisions_name(s, [run_id])) for s in wanted)):
        return previous
    out = {}
    if sel.global_decontam:
        opts = sel.global_decontam
        out[DECONTAM] = decontam_task(root, [run_id], against=resolve_against(opts["against"], base_dir),
                                      n=opts["n"], max_share=opts["max_share"])
    if sel.global_dedup:
        out[DEDUP] = dedup_task(root, [run_id], threshold=sel.global_dedup["threshold"],
                                scope=sel.global_dedup["scope"], workers=recipe.execution.dedup_workers)
    return out
