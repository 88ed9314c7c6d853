"""The `distill` command line."""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

# Quiet defaults, set before Prefect or vLLM is imported; a user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Prefect starts a temporary API server on first use; its 20 s default is short on a loaded small machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from distill.errors import ConfigError, DistillError, PartialRunError

app = typer.Typer(help="distill: distillation data for reasoning models. Sample long chain-of-thought traces "
                       "from a teacher, verify and filter them into a SQL warehouse.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
# Not on a terminal (a pipe, a file, CI), rich would cut tables at 80 columns: give them room.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)

ROOT_HELP = "Warehouse root: a folder or an object-store URL such as s3://bucket/prefix."
WAREHOUSE_HELP = ("Warehouse root: a folder or an object-store URL such as s3://bucket/prefix (default: the "
                  "recipe's, else ./distill-data).")


def parse_worker(text: str) -> tuple[int, int]:
    """--worker K/N: this process is worker K (from 0) of N sharing the run."""
    k, sep, n = text.partition("/")
    try:
        worker, workers = int(k), int(n)
    except ValueError:
        worker = workers = -1
    if not sep or workers < 1 or not 0 <= worker < workers:
        raise ConfigError(f"--worker {text!r}: expected K/N with 0 <= K < N, e.g. --worker 0/4 for the first of 4")
    return worker, workers


def log_path(warehouse: str, run_id: str, worker: int = 0, workers: int = 1) -> Path:
    """Where a run's engine logs go: <warehouse>/logs/ for a folder; ./distill-logs/ on this machine when the
    warehouse is object storage (a log grows line by line, an object is written whole)."""
    from distill.warehouse.storage import is_url

    name = run_id + (f".worker-{worker}-of-{workers}" if workers > 1 else "") + ".log"
    return (Path("distill-logs") if is_url(warehouse) else Path(warehouse) / "logs") / name


def fail(message: str) -> None:
    """Bad input found by the CLI itself: the same one line and exit code as any DistillError (see main)."""
    raise DistillError(message)


def prepare(recipe: Path, set_: list[str], limit: Optional[int], warehouse: Optional[str],
            worker: Optional[str] = None):
    """Load and check everything a run needs; each problem is one line on stderr and exit code 2."""
    from distill.config import parse_set
    from distill.flows.recipe import load_recipe
    from distill.generators import TEACHERS
    from distill.generators.models import check_model_name

    overrides = parse_set(set_)
    if limit is not None:
        overrides["limit"] = limit
    if warehouse is not None:
        overrides["warehouse"] = str(warehouse)
    if worker is not None:
        overrides["worker"], overrides["workers"] = parse_worker(worker)
    rcp = load_recipe(recipe, overrides)
    if rcp.execution.worker >= rcp.execution.workers:
        raise ConfigError(f"worker {rcp.execution.worker} of {rcp.execution.workers}: worker must be below workers "
                          "(workers are numbered from 0)")
    backend = rcp.backend_name()
    if backend == "openai" and not rcp.serving.api_base:
        raise ConfigError("backend openai needs api_base, e.g. --set api_base=http://127.0.0.1:8000/v1")
    if TEACHERS[backend].local:  # a served model's name is the server's to check
        check_model_name(rcp.teacher.model)
    from distill.verifiers import get_verifier

    get_verifier(rcp.selection.verifier)
    if rcp.selection.judge_model:  # set only with a verifier that names the judge
        rcp.judge_settings()  # a judge needs a server: judge_api_base, or the teacher's api_base
    from distill.flows.generate import build_filters, problems_for, task_runner_for

    build_filters(rcp, recipe.parent)
    from distill.flows.dedup import check_global

    check_global(rcp, recipe.parent)
    task_runner_for(rcp)
    problems = problems_for(rcp, recipe.parent)
    return rcp, backend, problems


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML file, e.g. recipes/default.yaml."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N problems."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: --set n=8 (repeatable)."),
    warehouse: Optional[str] = typer.Option(None, "--warehouse", help=WAREHOUSE_HELP),
    fresh: bool = typer.Option(False, "--fresh", help="Start a new run instead of resuming the same recipe's."),
    worker: Optional[str] = typer.Option(None, "--worker", help="K/N: share the run with N-1 other `distill run` "
                                         "processes (this or other machines, one warehouse): this one takes the "
                                         "shards i with i % N == K. Start all N with the same recipe."),
    verbose: bool = typer.Option(False, "--verbose", help="Also show the engine's logs (vLLM, Prefect, warnings) "
                                 "here; without it they go only to <warehouse>/logs/RUN_ID.log."),
):
    """Generate traces for a recipe, verify and filter them, store them, and print the funnel."""

    rcp, backend, problems = prepare(recipe, set_, limit, warehouse, worker)
    from distill.flows.generate import run_generate, run_id_for

    run_id = run_id_for(rcp, fresh)
    header = (f"run {run_id}: {len(problems)} problems × {rcp.sampling.n} samples, teacher {rcp.teacher.model} ({backend}), "
              f"warehouse {rcp.execution.warehouse}")
    command = shlex.join(["distill", *sys.argv[1:]])
    if verbose:
        err.print(header, highlight=False)
    else:  # the terminal shows the progress bar (named by the run id), the funnel and errors; the rest is logged
        from distill.flows.logs import to_log_file

        to_log_file(log_path(rcp.execution.warehouse, run_id, rcp.execution.worker, rcp.execution.workers),
                    {"stdout": out, "stderr": err}, command)
        print(header, file=sys.stderr, flush=True)  # fd 2 is the run's log file now
    result = run_generate(rcp, run_id, recipe.parent.absolute(), command)
    print_funnel(rcp.execution.warehouse, run_id, result)
    if result.get("failed_samples"):
        first = result["failures"][0]
        raise PartialRunError(f"{result['failed_samples']} samples failed (first: problem {first['problem_id']} "
                              f"sample {first['sample_index']}: {first['error']}); the finished ones are stored. "
                              "Run the same command again to generate only the missing ones.")


def prepare_import(source: Optional[str], recipe: Optional[Path], set_: list[str], shape: Optional[str],
                   field: list[str], teacher: Optional[str], verifier: Optional[str], name: Optional[str],
                   limit: Optional[int], warehouse: Optional[str]):
    """The import's recipe (a recipe file or the defaults, then the flags), checked, and its source's first
    row read: a bad flag, an unknown shape or a missing field is one line before anything starts."""
    from distill.config import parse_set
    from distill.flows.recipe import Recipe, load_recipe
    from distill.generators.imported import source_name

    overrides = parse_set(set_)
    fields = {}
    for pair in field:
        role, sep, column = pair.partition("=")
        if not sep or not role.strip() or not column.strip():
            raise ConfigError(f"--field expects ROLE=COLUMN, e.g. --field question=problem, got {pair!r}")
        fields[role.strip()] = column.strip()
    for k, v in (("dataset", source), ("import_shape", shape), ("model", teacher), ("verifier", verifier),
                 ("name", name), ("limit", limit), ("warehouse", warehouse)):
        if v is not None:
            overrides[k] = v
    if recipe is not None:
        rcp = load_recipe(recipe, overrides)
    elif source is None:
        raise ConfigError("distill import needs a SOURCE (a file, a folder or a Hub id) or a --recipe naming one")
    else:
        overrides.setdefault("name", "import-" + "".join(c if c.isalnum() or c in "-_." else "-"
                                                         for c in source_name(source)))
        rcp = Recipe.build(overrides)
    changes = {}
    if fields:  # the recipe's mapping, then the flags'
        changes["import_fields"] = {**(rcp.problems.import_fields or {}), **fields}
    if "model" not in rcp.teacher.model_fields_set:  # no teacher named: the rows' own, else the source's name
        changes["model"] = f"import:{source_name(rcp.problems.dataset)}"
    rcp = rcp.replace(**changes) if changes else rcp
    from distill.flows.dedup import check_global
    from distill.flows.generate import build_filters, task_runner_for
    from distill.flows.importer import importer_for
    from distill.verifiers import get_verifier

    base_dir = recipe.parent.absolute() if recipe is not None else None
    get_verifier(rcp.selection.verifier)
    build_filters(rcp, base_dir)
    check_global(rcp, base_dir)
    task_runner_for(rcp)
    src = importer_for(rcp, base_dir)
    rows = src.rows()  # the first row fixes the shape and shows a missing field now
    first = next(rows, None)
    rows.close()
    if first is None:
        raise DistillError(f"import source {rcp.problems.dataset!r} has no rows")
    return rcp, src, base_dir


@app.command("import")
def import_(
    source: Optional[str] = typer.Argument(None, help="Traces to import: a .jsonl or .parquet file, a folder (of "
                                           "such files, or from datasets' save_to_disk) or a Hub dataset id "
                                           "(default: the recipe's dataset)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Take the keys (filters, selection, verifier, "
                                          "shard_size, import_shape, import_fields, …) from this recipe."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: --set keep_per_problem=1 (repeatable)."),
    shape: Optional[str] = typer.Option(None, "--shape", help="messages | sharegpt | openr1 | prompt_completion "
                                        "(default: told from the columns)."),
    field: list[str] = typer.Option([], "--field", help="ROLE=COLUMN: where a role is in the rows, e.g. --field "
                                    "question=problem (roles: question, answer, completion, reasoning, teacher, "
                                    "generations, messages) (repeatable)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Teacher of rows with no model/teacher/generator "
                                          "column (default: import:SOURCE_NAME)."),
    verifier: Optional[str] = typer.Option(None, "--verifier", help="Verifier of the answers (default: math)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name; the run id adds the recipe's fingerprint "
                                       "(default: the recipe's name, else import-SOURCE_NAME)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Import only the first N problems."),
    warehouse: Optional[str] = typer.Option(None, "--warehouse", help=WAREHOUSE_HELP),
    verbose: bool = typer.Option(False, "--verbose", help="Also show Prefect's logs here; without it they go only "
                                 "to <warehouse>/logs/RUN_ID.log."),
):
    """Import traces you already have (chat messages, ShareGPT, OpenR1 generations, prompt/completion), then
    verify, filter, select and store them as a run, and print the funnel.

    The source is streamed, never loaded whole; a rerun of the same command resumes: shards already stored are
    skipped. The sample ids do not depend on the run, so importing the same file again names the same samples.
    """
    rcp, src, base_dir = prepare_import(source, recipe, set_, shape, field, teacher, verifier, name, limit, warehouse)
    from distill.flows.generate import run_id_for
    from distill.flows.importer import run_import

    run_id = run_id_for(rcp)
    header = (f"import {run_id}: {src.source} ({src.shape}), teacher {rcp.teacher.model} unless the rows name one, "
              f"warehouse {rcp.execution.warehouse}")
    command = shlex.join(["distill", *sys.argv[1:]])
    if verbose:
        err.print(header, highlight=False)
    else:
        from distill.flows.logs import to_log_file

        to_log_file(log_path(rcp.execution.warehouse, run_id), {"stdout": out, "stderr": err}, command)
        print(header, file=sys.stderr, flush=True)
    result = run_import(rcp, run_id, base_dir, command)
    print_funnel(rcp.execution.warehouse, run_id, result)


@app.command()
def serve(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    cron: str = typer.Option(..., "--cron", help='Schedule, e.g. "0 * * * *" (hourly).'),
    name: Optional[str] = typer.Option(None, "--name", help="Deployment name (default: the recipe's name)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N problems."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key (repeatable)."),
    warehouse: Optional[str] = typer.Option(None, "--warehouse", help=WAREHOUSE_HELP),
):
    """Serve the recipe as a Prefect deployment on a cron schedule, from this process.

    Every scheduled run resumes the same run: shards already stored are skipped, so each run
    generates only for problems added to the dataset since the last one. Runs (and a manual
    `prefect deployment run generate/NAME`) show in the Prefect UI of the server PREFECT_API_URL names.
    """
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError:
        fail(f"--cron {cron!r} is not a cron expression (e.g. \"0 * * * *\")")
    rcp, backend, problems = prepare(recipe, set_, limit, warehouse)
    from distill.flows.generate import generate, run_id_for, task_runner_for

    run_id = run_id_for(rcp)
    deployment = name or rcp.name
    err.print(f"serving [bold]generate/{deployment}[/] on {cron!r}: run {run_id}, {len(problems)} problems now, "
              f"teacher {rcp.teacher.model} ({backend})", highlight=False)
    command = shlex.join(["distill", *sys.argv[1:]])
    generate.with_options(task_runner=task_runner_for(rcp)).serve(
        name=deployment, cron=cron,
        parameters={"recipe": rcp.model_dump(), "run_id": run_id, "base_dir": str(recipe.parent.absolute()),
                    "command": command})


def print_funnel(root: str, run_id: str, run: dict) -> None:
    from distill.warehouse.store import Warehouse

    wh = Warehouse(root)
    cols, rows = wh.query("SELECT * FROM funnel WHERE run_id = ?", [run_id])
    f = dict(zip(cols, rows[0])) if rows else {}
    _, reasons = wh.query("SELECT rejected_by, count(*) FROM traces WHERE run_id = ? AND NOT kept "
                          "GROUP BY 1 ORDER BY 2 DESC, 1", [run_id])
    table = Table(title=f"funnel — {run_id}", show_header=True)
    table.add_column("step")
    table.add_column("count", justify="right")
    for label, key in (("problems", "problems"), ("samples", "samples"), ("verified correct", "correct"),
                       ("unverifiable", "unverifiable"), ("kept", "kept")):
        table.add_row(label, str(f.get(key, 0)))
    for reason, count in reasons:
        table.add_row(f"  rejected: {reason}", str(count))
    out.print(table)
    _, steps = wh.query('SELECT stage, "in", dropped, kept, dropped_by_reason FROM filter_funnel '
                        'WHERE run_id = ? ORDER BY step', [run_id])
    if steps:
        by_step = Table(title="by step", show_header=True)
        for c in ("step", "in", "dropped", "kept", "reasons"):
            by_step.add_column(c, justify="left" if c in ("step", "reasons") else "right")
        for stage, n_in, dropped, kept, reasons in steps:
            by_step.add_row(stage, str(n_in), str(dropped), str(kept),
                            ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
        out.print(by_step)
    timings = run.get("timings", {})  # summed over the run's calls, like the tokens
    tokens = f.get("generated_tokens") or 0  # the teacher's own: copied samples took no generation time
    gen = timings.get("generate", 0.0)
    rate = f"{tokens / gen:,.0f} tokens/s" if gen else "no generation time recorded"
    call = (run.get("calls") or [{}])[-1]  # what this call paid the teacher for, and what it found stored
    runs = call.get("reused_from") or []
    origin = f" from {', '.join(runs[:2])}{', …' if len(runs) > 2 else ''}" if runs else ""
    recovered = f", {call['recovered']} from checkpoints" if call.get("recovered") else ""
    this = (f"  ·  this call: {call.get('rows_read', 0)} rows read" if run.get("backend") == "import" else
            f"  ·  this call: {call.get('generated', 0)} samples from the teacher, {call.get('reused', 0)} reused")
    out.print(f"tokens generated: {tokens:,}  ·  {rate}  ·  wall {timings.get('wall', 0):.1f} s"
              + (f"  ·  {run['shards_resumed']} of {run['shards']} shards already done" if run.get("shards_resumed") else "")
              + this + origin + recovered, highlight=False)
    if run.get("pass_rate_from"):  # problems never sent to the teacher: outside the range in the other run
        skipped = run.get("problems_skipped") or {}
        out.print(f"problems skipped by run {run['pass_rate_from']}'s pass rates: {skipped.get('pass_rate', 0)} out of "
                  f"range, {skipped.get('not_in_run', 0)} it never sampled", highlight=False)
    out.print("query it: distill sql \"select rejected_by, count(*) from traces group by 1\""
              + ("" if str(root) in ("./distill-data", "distill-data") else f" --warehouse {root}"), highlight=False)


FORMATS = ("table", "csv", "json", "parquet")


@app.command()
def sql(
    query: str = typer.Argument(..., help="SQL over the views traces, accepted, problems, pass_rates, difficulty, "
                                "funnel, filter_funnel, journeys, verdict_disagreements, ratings, rollout_steps, "
                                "runs, evals."),
    warehouse: str = typer.Option("./distill-data", "--warehouse", help=ROOT_HELP),
    fmt: Optional[str] = typer.Option(None, "--format", help="table | csv | json | parquet (default: from --out's "
                                      "suffix, else table)."),
    out_path: Optional[Path] = typer.Option(None, "--out", help="Write the result to this file instead of stdout."),
):
    """Query the warehouse with SQL (DuckDB dialect, read-only) and print or save the result."""
    import csv
    import json

    import duckdb

    from distill.warehouse.store import Warehouse, check_read_only

    fmt = fmt or (out_path.suffix.lstrip(".").lower() if out_path else "table")
    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "parquet" and out_path is None:
        fail("--format parquet needs --out FILE")
    wh = Warehouse(warehouse)
    wh.refresh_if_writable()
    try:
        if out_path is not None and fmt in ("parquet", "csv", "json"):
            con = wh.connect(read_only=True)
            try:
                check_read_only(con, query)
                # COPY writes the file from inside DuckDB: no detour through Python objects
                options = {"parquet": "FORMAT parquet", "csv": "FORMAT csv, HEADER",
                           "json": "FORMAT json, ARRAY true"}[fmt]
                target = str(out_path).replace("'", "''")
                con.execute(f"COPY ({query.rstrip().rstrip(';')}) TO '{target}' ({options})")
                count = con.execute(f"SELECT count(*) FROM ({query.rstrip().rstrip(';')})").fetchone()[0]
            finally:
                con.close()
            err.print(f"{count} row{'s' if count != 1 else ''} → {out_path}")
            return
        cols, rows = wh.query(query)
    except duckdb.Error as e:
        fail(str(e).splitlines()[0])
    if fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
    elif fmt == "json":
        print(json.dumps([dict(zip(cols, r)) for r in rows], default=str, ensure_ascii=False, indent=1))
    else:
        print_rows(cols, rows, null="NULL")
        err.print(f"{len(rows)} row{'s' if len(rows) != 1 else ''}")


def print_rows(cols: list[str], rows: list[tuple], null: str = "") -> None:
    table = Table(show_header=True)
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*[null if v is None else str(v) for v in r])
    out.print(table)


@app.command()
def runs(warehouse: str = typer.Option("./distill-data", "--warehouse", help=ROOT_HELP)):
    """List the runs in the warehouse: status, counts, tokens, wall time."""
    from distill.warehouse.store import Warehouse

    wh = Warehouse(warehouse)
    wh.refresh_if_writable()
    cols, rows = wh.query(
        "SELECT r.run_id, r.status, r.started_at, r.teacher, f.problems, f.samples, f.correct, f.kept, "
        "f.completion_tokens AS tokens, round(r.timings.wall, 1) AS wall_s "
        "FROM runs r LEFT JOIN funnel f USING (run_id) ORDER BY r.started_at")
    print_rows(cols, rows)


@app.command()
def show(
    run_id: str = typer.Argument(..., help="A run id, as `distill runs` lists them."),
    warehouse: str = typer.Option("./distill-data", "--warehouse", help=ROOT_HELP),
):
    """What one run did: recipe, command, versions, git revision, timings, tokens and the funnel."""
    import yaml

    from distill.warehouse.store import Warehouse

    wh = Warehouse(warehouse)
    run = wh.read_run(run_id)
    if run is None:
        known = wh.run_ids()
        fail(f"no run {run_id!r} in {wh.root} (runs: {', '.join(known) or 'none'})")
    out.print(f"[bold]{run_id}[/]  {run['status']}  {run['started_at']} → {run.get('finished_at')}", highlight=False)
    for key in ("command", "backend", "teacher", "git_sha", "error"):
        if run.get(key):
            out.print(f"{key}: {run[key]}", highlight=False)
    out.print("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(run.get("versions", {}).items())), highlight=False)
    calls = len(run.get("calls") or [])
    out.print(f"timings (s{f', summed over {calls} calls' if calls > 1 else ''}): "
              + ", ".join(f"{k} {v:.1f}" for k, v in sorted(run.get("timings", {}).items())), highlight=False)
    if run.get("filters"):
        out.print("filter reports: " + json.dumps(run["filters"], default=str), highlight=False)
    out.print("recipe:", highlight=False)
    out.print(yaml.safe_dump(run["recipe"], sort_keys=False).rstrip(), highlight=False, markup=False)
    print_funnel(str(warehouse), run_id, run)


@app.command()
def export(
    out_dir: Path = typer.Option(..., "--out", help="Folder to write the dataset to (data/*.parquet + README.md)."),
    runs_: Optional[str] = typer.Option(None, "--runs", help="Comma-separated run ids (default: all runs)."),
    where: Optional[str] = typer.Option(None, "--where", help="SQL predicate on traces, e.g. \"completion_tokens < 500\"."),
    variant: str = typer.Option("shortcut", "--variant", help="shortcut (correct paths only) | journey "
                                "(wrong path, noticed, then a correct path) | mixed (both) | dpo (prompt, chosen: "
                                "a kept correct sample, rejected: a wrong one of the same problem)."),
    test_size: float = typer.Option(0.0, "--test-size", help="Share of problems in a test split (0 = train only)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/test split and of sampling within --mix sources."),
    max_wrong: int = typer.Option(1, "--max-wrong", help="journey: most wrong paths before the correct one."),
    pairs_per_problem: int = typer.Option(1, "--pairs-per-problem", help="dpo: most pairs per problem (the i-th "
                                          "correct with the i-th wrong sample, in sample order)."),
    difficulty_min: Optional[float] = typer.Option(None, "--difficulty-min", help="Only problems at least this hard "
                                                   "in their run: 0 easy … 1 hard (1 - pass rate, the difficulty "
                                                   "view)."),
    difficulty_max: Optional[float] = typer.Option(None, "--difficulty-max", help="Only problems at most this hard "
                                                   "(0 … 1)."),
    order: str = typer.Option("trace_id", "--order", help="trace_id | difficulty (a curriculum: easy → hard, ties by "
                              "trace_id)."),
    difficulty_by: str = typer.Option("pass_rate", "--difficulty-by", help="What --difficulty-min/max and --order "
                                      "difficulty go by: pass_rate (in the row's run) | rating (judges' ratings, "
                                      "distill rate)."),
    mix: Optional[list[str]] = typer.Option(None, "--mix", help="A source of a mix, repeatable: RUN_ID=SPEC or "
                                            "CHAT_FILE=SPEC (.jsonl/.json/.parquet rows of messages), SPEC a count "
                                            "(600), a weight (0.25, with --total) or all; or one mix.yaml. The first "
                                            "listed source to give a problem keeps it."),
    total: Optional[int] = typer.Option(None, "--total", help="--mix with weights: the rows they are shares of."),
    chat_think: str = typer.Option("empty", "--chat-think", help="--mix chat files' assistant turns: empty (an "
                                   "empty <think></think> block before the answer) | none (as they are)."),
    hub: Optional[str] = typer.Option(None, "--hub", help="Also push to this Hugging Face dataset repo (org/name)."),
    private: bool = typer.Option(False, "--private", help="With --hub: create the repo private."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists (an earlier export included)."),
    warehouse: str = typer.Option("./distill-data", "--warehouse", help=ROOT_HELP),
):
    """Export a dataset ({"messages": [...]}): kept traces (shortcut) or journeys, or a mix of runs and chat files, in curriculum order if asked, or preference pairs (dpo), with a card; optionally push it."""
    from distill.warehouse.export import export as do_export, push_to_hub
    from distill.warehouse.store import Warehouse

    wh = Warehouse(warehouse)
    wh.refresh_if_writable()
    command = shlex.join(["distill", *sys.argv[1:]])
    result = do_export(warehouse, out_dir, runs=[r.strip() for r in runs_.split(",") if r.strip()] if runs_ else None,
                       where=where, variant=variant, test_size=test_size, seed=seed, max_wrong=max_wrong,
                       difficulty_min=difficulty_min, difficulty_max=difficulty_max, order=order,
                       difficulty_by=difficulty_by, mix=mix or None, total=total, chat_think=chat_think,
                       pairs_per_problem=pairs_per_problem, command=command, overwrite=overwrite)
    for warning in result.warnings:
        err.print(f"warning: {warning}", highlight=False)
    out.print(f"exported {', '.join(f'{k}: {v} rows' for k, v in result.splits.items())} → {result.out} "
              f"(card: {result.out / 'README.md'})", highlight=False)
    if hub:
        try:
            url = push_to_hub(result.out, hub, private=private)
        except Exception as e:  # huggingface_hub raises many types; its messages never carry the token
            fail(f"push to {hub} failed: {str(e).splitlines()[0]}")
        out.print(f"pushed → {url}", highlight=False)


@app.command()
def journeys(
    run_id: str = typer.Argument(..., help="Run whose samples to build journeys from (see `distill runs`)."),
    mode: str = typer.Option("template", "--mode", help="template (reflection + a correct sample) | teacher (the "
                             "run's teacher continues each wrong path; kept if the continuation verifies)."),
    max_wrong: Optional[int] = typer.Option(None, "--max-wrong", help="Most wrong branches per journey "
                                            "(default: the run's recipe, journey_max_wrong)."),
    per_problem: Optional[int] = typer.Option(None, "--per-problem", help="Most journeys per problem "
                                              "(default: the run's recipe, journey_per_problem)."),
    journey_recipe: Optional[Path] = typer.Option(None, "--recipe", help="Take the journey_* keys (prompt, worked "
                                                  "corrections, caps) from this recipe instead of the run's."),
    batch: int = typer.Option(64, "--batch", help="teacher: wrong paths sent to the teacher at once; finished "
                              "journeys are saved after each batch, so a crash loses at most one."),
    warehouse: str = typer.Option("./distill-data", "--warehouse", help=ROOT_HELP),
):
    """Build journey rows (kind = journey: a wrong path, noticed, then a right one) from a run's samples."""
    from distill.flows.journey import build_journeys, recipe_of_run

    if (max_wrong is not None and max_wrong < 1) or (per_problem is not None and per_problem < 1):
        raise DistillError("--max-wrong and --per-problem must be >= 1")
    rcp = recipe_of_run(warehouse, run_id)
    if journey_recipe:
        from distill.flows.recipe import load_recipe

        other = load_recipe(journey_recipe)
        rcp = rcp.replace(**{k: v for k, v in other.journeys.model_dump().items() if k != "journey"})
    stats = build_journeys(rcp, run_id, mode, max_wrong=max_wrong, per_problem=per_problem, batch=batch)
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(stats["rejected"].items())) or "none"
    out.print(f"{mode} journeys for {run_id}: {stats['built']} built, {stats['reused']} already stored "
              f"({stats['asked']} teacher prompts); {stats['journeys']} stored, {stats['kept']} kept over "
              f"{stats['problems_kept']} problems (rejected: {rejected}) in {stats['seconds']} s", highlight=False)
    out.print("see them: distill sql \"select * from journeys\"; train on them: distill export --variant journey",
              highlight=False)


STORE_HELP = "Warehouse root: a folder or an object-store URL (s3://bucket/prefix)."


@app.command()
def dedup(
    run_ids: list[str] = typer.Argument(..., metavar="RUN_ID", help="Runs to dedup together (see `distill runs`)."),
    warehouse: str = typer.Option("./distill-data", "--warehouse", help=STORE_HELP),
    threshold: float = typer.Option(0.85, "--threshold", help="Estimated Jaccard similarity (MinHash, 5-word "
                                    "shingles) at or above which two samples are near duplicates."),
    scope: str = typer.Option("dataset", "--scope", help="dataset (every sample of the runs) | problem (samples "
                              "of the same problem only)."),
    workers: int = typer.Option(1, "--workers", help="Processes computing MinHash signatures (worth it on many "
                                "cores for large runs; fewer than 4,096 distinct texts are signed in this process)."),
):
    """Exact and near-duplicate samples over whole runs at once; each cluster keeps its lowest trace_id.

    Decides over the kept samples of every run named, whatever shard or call made them, and stores the
    decisions beside the parts (<warehouse>/decisions/); the views overlay them. Deciding again over the
    same runs replaces them.
    """
    from distill.flows.dedup import dedup_runs
    from distill.warehouse.store import Warehouse

    if workers < 1:
        fail("--workers must be >= 1")
    c = dedup_runs(warehouse, run_ids, threshold=threshold, scope=scope, workers=workers)
    out.print(f"global dedup of {', '.join(c['runs'])} (scope {c['scope']}, threshold {c['threshold']}): "
              f"{c['samples']} kept samples, {c['clusters']} clusters; dropped {c['duplicate']} duplicate, "
              f"{c['near_duplicate']} near_duplicate; {c['kept']} kept in {c['seconds']:.1f} s → {c['decisions']}",
              highlight=False)
    wh = Warehouse(warehouse)
    for run_id in c["runs"]:
        print_funnel(warehouse, run_id, wh.read_run(run_id) or {})


@app.command()
def decontam(
    run_ids: list[str] = typer.Argument(..., metavar="RUN_ID", help="Runs to check (see `distill runs`)."),
    against: list[str] = typer.Option(..., "--against", help="Eval set: a .jsonl file, PATH:FIELD to name the "
                                      "field that holds the problem text (default field: problem) (repeatable)."),
    n: int = typer.Option(13, "--n", help="Words in a row that count as an overlap (shorter eval items match whole)."),
    max_share: float = typer.Option(0.0, "--max-share", help="Drop a problem when more than this share of its "
                                    "words is covered by overlaps."),
    warehouse: str = typer.Option("./distill-data", "--warehouse", help=STORE_HELP),
):
    """Drop every sample of a problem that overlaps an evaluation set (word n-grams), over whole runs.

    The decisions are stored beside the parts (<warehouse>/decisions/) and overlaid by the views; deciding
    again over the same runs replaces them.
    """
    from distill.flows.dedup import decontam_runs
    from distill.warehouse.store import Warehouse

    sets = []
    for spec in against:
        path, sep, field = spec.rpartition(":")
        # PATH:FIELD, where FIELD is a plain name; a colon inside the path (or none at all) leaves PATH alone
        sets.append({"path": path, "field": field} if sep and path and field.isidentifier() else {"path": spec})
    c = decontam_runs(warehouse, run_ids, against=sets, n=n, max_share=max_share)
    found = [f"{h['problem_id']} ({h['eval_set']} line {h['eval_line']})" for h in c["problems_found"]]
    shown = f" ({', '.join(found[:3])}{', …' if len(found) > 3 else ''})" if found else ""
    out.print(f"decontamination of {', '.join(c['runs'])} (n {c['n']}): {c['problems']} problems, "
              f"{c['contaminated_problems']} contaminated{shown}; {c['contaminated']} of {c['samples']} samples "
              f"dropped as contaminated ({c['dropped']} of them kept until now) in {c['seconds']:.1f} s "
              f"→ {c['decisions']}", highlight=False)
    wh = Warehouse(warehouse)
    for run_id in c["runs"]:
        print_funnel(warehouse, run_id, wh.read_run(run_id) or {})


@app.command()
def rate(
    run_id: str = typer.Argument(..., help="Run whose problems to rate (see `distill runs`)."),
    judge_model: str = typer.Option(..., "--judge-model", help="The rating model, as its server names it."),
    api_base: str = typer.Option(..., "--api-base", help="Its OpenAI-compatible server, e.g. http://127.0.0.1:8001/v1."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the "
                                    "server's API key (never logged or stored)."),
    concurrency: int = typer.Option(8, "--concurrency", help="Requests in flight at once."),
    warehouse: str = typer.Option("./distill-data", "--warehouse", help=STORE_HELP),
):
    """Rate each problem of a run from 1 (trivial) to 10 (hardest) by a judge model that sees the question only.

    The ratings are stored beside the parts (<warehouse>/ratings/, the `ratings` view) with the versioned
    prompt; a problem already rated by the same model and prompt is not asked again.
    """
    from distill.flows.judge import rate_problems

    if concurrency < 1:
        fail("--concurrency must be >= 1")
    c = rate_problems(warehouse, run_id, judge_model, api_base, api_key_env, concurrency)
    out.print(f"ratings of {c['run_id']} by {c['rater']} ({c['prompt_version']}): {c['problems']} problems, "
              f"{c['asked']} asked, {c['cached']} already rated, {c['unreadable']} replies without a rating "
              "(null); see them: distill sql \"select * from ratings\"", highlight=False)


@app.command()
def pipeline(
    recipe: Path = typer.Argument(..., help="Pipeline recipe YAML, e.g. recipes/pipeline-default.yaml."),
    set_: list[str] = typer.Option([], "--set", help="Override a pipeline key: --set eval_n=8 (repeatable)."),
):
    """Generate → export → train the arms (SFT, DPO, GRPO) → evaluate them, base and few-shot on held-out problems."""
    from distill.flows.pipeline import run_pipeline
    from distill.config import parse_set

    summary = run_pipeline(recipe, parse_set(set_))
    from distill.flows.pipeline import results_markdown

    out.print(results_markdown(summary), highlight=False, markup=False)


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="Training recipe YAML, e.g. recipes/train-default.yaml."),
    set_: list[str] = typer.Option([], "--set", help="Override a training key: --set max_steps=20 (repeatable)."),
):
    """Fine-tune a student: SFT on distilled traces (loss on the assistant's tokens, journeys' wrong paths optionally masked), DPO on right/wrong pairs or on-policy distillation from a teacher; full or LoRA."""
    from distill.config import parse_set
    from distill.trainers.sft import load_train_config, train as do_train

    cfg = load_train_config(recipe, parse_set(set_))
    result = do_train(cfg)
    losses = result["losses"]
    out.print(f"trained {result['global_step']} steps on {result['examples']} examples"
              + (f"; loss {losses[0]:.3f} → {losses[-1]:.3f}" if losses else "")
              + f"; model in {result['output_dir']}", highlight=False)
    out.print(f"evaluate it: distill eval --model {result['output_dir']} --benchmark addition", highlight=False)


@app.command()
def rl(
    recipe: Path = typer.Argument(..., help="RL recipe YAML, e.g. recipes/rl-default.yaml."),
    set_: list[str] = typer.Option([], "--set", help="Override an RL key: --set max_steps=20 (repeatable)."),
):
    """Train a policy with GRPO (TRL), distill's verifiers as rewards; every rollout is stored as a warehouse row."""
    from distill.config import parse_set
    from distill.trainers.rl import load_rl_config, train_rl

    cfg = load_rl_config(recipe, parse_set(set_))
    result = train_rl(cfg, base_dir=recipe.parent, command=shlex.join(["distill", *sys.argv[1:]]))
    rewards = [r["reward"] for r in result["rewards"] if r["reward"] is not None]
    resumed = f" (resumed at step {result['resumed_from']})" if result["resumed_from"] else ""
    out.print(f"trained {result['global_step']} steps{resumed} on {result['problems']} problems"
              + (f"; reward {rewards[0]:.3f} → {rewards[-1]:.3f}" if rewards else "")
              + f"; model in {result['output_dir']}; rollouts in run {result['run_id']}", highlight=False)
    where = "" if result["warehouse"] in ("distill-data", "./distill-data") else f" --warehouse {result['warehouse']}"
    out.print(f"reward curve: distill sql \"select * from rollout_steps where run_id = '{result['run_id']}' "
              f"order by step\"{where}", highlight=False)


@app.command("eval")
def eval_(
    model: str = typer.Option(..., "--model", help="Model to evaluate: an alias, a local path (e.g. a trained "
                              "student) or a Hugging Face id."),
    benchmark: str = typer.Option(..., "--benchmark", help="gsm8k | math500 | addition (shipped slices), or a "
                                  "dataset file / Hub id."),
    n: int = typer.Option(4, "--n", help="Samples per problem (pass@1 is averaged over them)."),
    k: Optional[int] = typer.Option(None, "--k", help="Votes for maj@k (default: n)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N problems."),
    backend: str = typer.Option("auto", "--backend", help="auto | vllm | transformers."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Most new tokens per sample."),
    temperature: float = typer.Option(0.6, "--temperature", help="Sampling temperature."),
    recipe: Optional[Path] = typer.Option(None, "--prompt-from", help="Use this recipe's system prompt, few-shot "
                                          "turns and prompt_template (default: the bare question, zero-shot)."),
    question_field: str = typer.Option("question", "--question-field", help="For a dataset file: question column."),
    answer_field: str = typer.Option("answer", "--answer-field", help="For a dataset file: answer column."),
    warehouse: str = typer.Option("./distill-data", "--warehouse", help="Where the result is stored."),
):
    """Evaluate a model: pass@1 over n samples and maj@k, with the same verifier as the data; stores the result."""
    from distill.flows.recipe import load_recipe
    from distill.generators.models import check_model_name
    from distill.trainers.evaluate import benchmark_problems, evaluate, save
    from distill.warehouse.store import Warehouse

    if k is not None and not 1 <= k <= n:
        fail(f"--k must be between 1 and --n ({n}), got {k}")
    check_model_name(model)
    rcp = load_recipe(recipe) if recipe else None
    problems = benchmark_problems(benchmark, limit, question_field=question_field, answer_field=answer_field)
    result = evaluate(model, benchmark, problems, n=n, k=k, backend=backend, max_tokens=max_tokens,
                      temperature=temperature, system_prompt=rcp.prompt.system_prompt if rcp else None,
                      few_shot=rcp.prompt.few_shot if rcp else None,
                      prompt_template=rcp.prompt.prompt_template if rcp else "{question}")
    path = save(result, warehouse)
    Warehouse(warehouse).refresh()
    table = Table(title=f"{model} on {benchmark} ({result.problems} problems, n={result.n})", show_header=True)
    for c in ("metric", "value", "95% CI"):
        table.add_column(c)
    table.add_row("pass@1", f"{result.pass_at_1:.3f}", f"{result.pass_at_1_ci[0]:.3f}–{result.pass_at_1_ci[1]:.3f}")
    table.add_row(f"maj@{result.k}", f"{result.maj_at_k:.3f}", f"{result.maj_at_k_ci[0]:.3f}–{result.maj_at_k_ci[1]:.3f}")
    table.add_row("answers boxed", f"{result.boxed_rate:.3f}", "")
    out.print(table)
    if result.boxed_rate == 0:
        err.print("hint: no answer was in \\boxed{}, so strict pass@1 (right and boxed) is 0: the model has not "
                  "learned the answer format; a student needs more training steps, a base model the format shown "
                  "(--prompt-from recipes/default.yaml).", highlight=False, markup=False)
    err.print(f"stored: {path} (distill sql \"select * from evals\")", highlight=False)


def read_stdin(what: str) -> str:
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(f"{what} on stdin is not UTF-8 (byte {e.start}: {e.reason})")


@app.command()
def verify(
    verifier: str = typer.Option("math", "--verifier", help="Verifier name: math, code, countdown, format."),
    reference: str = typer.Option("", "--reference", help="The reference answer (for code: JSON with tests)."),
):
    """Check one completion (read from stdin) by hand; prints the verdict as JSON."""
    import json

    from distill.verifiers import get_verifier

    fn = get_verifier(verifier)
    print(json.dumps(fn(read_stdin("the completion"), reference or None).as_dict(), ensure_ascii=False))


@app.command()
def score(
    filter_name: str = typer.Argument(..., metavar="FILTER", help="Filter name, e.g. language, repetition."),
    set_: list[str] = typer.Option([], "--set", help="Override a filter parameter: --set target=zh (repeatable)."),
):
    """Score one reasoning text (read from stdin) with a filter (default thresholds unless --set)."""
    import json

    from distill import filters
    from distill.config import parse_set
    from distill.warehouse.schema import Trace

    f = filters.make_filter(filter_name, **parse_set(set_))
    text = read_stdin("the reasoning")
    trace = Trace(trace_id="-", run_id="-", problem_id="-", sample_index=0, source="stdin", domain="math",
                  prompt=[], reference=None, teacher="-", backend="-", sampling="{}", completion=text,
                  reasoning=text, answer="", finish_reason=None)
    f.prepare([trace])
    value = f.score(trace)
    kept, reason = f.decide(value)
    print(json.dumps({"score": value, "kept": kept, "reason": reason}))


def write_page(warehouse: Path, what: str, render) -> None:
    """Bring the views up to date, render, and say where the page went; bad run ids are one line."""
    import duckdb

    from distill.warehouse.store import Warehouse

    try:
        Warehouse(warehouse).refresh_if_writable()
        path = render()
    except duckdb.Error as e:
        fail(f"the warehouse at {warehouse} cannot be read: {str(e).splitlines()[0]}")
    out.print(f"{what} → {path}", highlight=False)


@app.command()
def report(
    run_id: str = typer.Argument(..., help="A run id, as `distill runs` lists them."),
    warehouse: str = typer.Option("./distill-data", "--warehouse", help=ROOT_HELP),
    out_path: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write."),
):
    """One run as a self-contained HTML page (no network needed to view it): summary, funnel, reasoning
    lengths, pass rates, language consistency, duplicates, decontamination, tokens and cost, throughput,
    and sample traces. `distill run` writes the same page to <warehouse>/reports/RUN_ID.html."""
    from distill.warehouse.report import write_report

    write_page(warehouse, "report", lambda: write_report(warehouse, run_id, out_path))


@app.command()
def compare(
    run_a: str = typer.Argument(..., help="The first run id (A)."),
    run_b: str = typer.Argument(..., help="The second run id (B), e.g. another teacher or temperature."),
    warehouse: str = typer.Option("./distill-data", "--warehouse", help=ROOT_HELP),
    out_path: Path = typer.Option(Path("compare.html"), "--out", help="HTML file to write."),
):
    """Two runs side by side on one self-contained HTML page: the report's figures for each, and the
    summary in two columns with the difference B − A."""
    from distill.warehouse.report import write_compare

    write_page(warehouse, "comparison", lambda: write_compare(warehouse, run_a, run_b, out_path))


def main() -> None:
    """The one place errors become messages: a DistillError is one line and its exit code (2 bad input,
    3 a partial run); anything else is a bug and keeps its traceback."""
    try:
        app()
    except DistillError as e:
        err.print(Text.assemble(("error:", "bold red"), " ", str(e)), highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
