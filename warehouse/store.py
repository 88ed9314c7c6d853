"""Parquet part files plus a DuckDB catalog of views over them.

<root>/traces/run_id=<id>/part-<shard>.parquet   one file per shard: its samples, verified and filtered
<root>/traces/run_id=<id>/ckpt-<shard>-*.parquet samples of a shard still generating, raw, written as they
                                                 finish; folded into the part when the shard completes
<root>/traces/run_id=<id>/journey-<mode>.parquet journey rows built from the run's samples (kind = journey)
<root>/runs/<run_id>.json                        what ran: recipe, versions, counts, timings
<root>/plans/<run_id>.json                       which problems each shard holds: extended, never reordered
<root>/catalog.duckdb                            views only; rebuilt from the files at any time

The files are the truth and the catalog is derived from them, so a lost or stale catalog costs a
refresh, never data. Every stored sample, in a part or a checkpoint of any run, is in the generation
cache (`find_samples`): a run that needs a sample with the same trace_id copies it instead of paying
the teacher again.
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from distill.warehouse.schema import SCHEMA, Trace, from_table, to_table
from distill.errors import DistillError
from distill.files import replacing, write_text

# Queries the catalog answers. `funnel` counts one run's way from problems to kept samples.
VIEWS = {
    "traces": "SELECT * FROM read_parquet({parts}, union_by_name = true)",
    "accepted": "SELECT * FROM traces WHERE kept",
    "funnel": """
        SELECT run_id,
               count(DISTINCT problem_id)                           AS problems,
               count(*)                                             AS samples,
               count(*) FILTER (WHERE finish_reason = 'length')     AS truncated,
               count(*) FILTER (WHERE correct)                      AS correct,
               count(*) FILTER (WHERE correct IS NULL)              AS unverifiable,
               count(*) FILTER (WHERE kept)                         AS kept,
               sum(completion_tokens)                               AS completion_tokens,
               -- generated: paid for by this run; reused: copied from the run that paid (reused_from)
               count(*) FILTER (WHERE reused_from IS NULL)          AS generated,
               count(*) FILTER (WHERE reused_from IS NOT NULL)      AS reused,
               sum(completion_tokens) FILTER (WHERE reused_from IS NULL) AS generated_tokens
        FROM traces WHERE kind = 'sample' GROUP BY run_id""",
    # Journey rows per run and mode: how many were tried and kept, and the samples they came from.
    "journeys": """
        SELECT run_id, json_extract_string(sampling, '$.journey') AS mode,
               count(DISTINCT problem_id) AS problems, count(*) AS journeys,
               count(*) FILTER (WHERE kept) AS kept, sum(completion_tokens) AS completion_tokens
        FROM traces WHERE kind = 'journey' GROUP BY ALL""",
    "pass_rates": """
        SELECT run_id, problem_id, any_value(source) AS source,
               count(*) AS samples, count(*) FILTER (WHERE correct) AS correct,
               count(*) FILTER (WHERE correct) / count(*) AS pass_rate,
               count(*) FILTER (WHERE kept) AS kept
        FROM traces WHERE kind = 'sample' GROUP BY run_id, problem_id""",
    "problems": """
        SELECT problem_id, any_value(source) AS source, any_value(domain) AS domain,
               any_value(prompt[len(prompt)].content) AS question, any_value(reference) AS reference,
               count(DISTINCT run_id) AS runs, count(*) AS samples
        FROM traces WHERE kind = 'sample' GROUP BY problem_id""",
    # Per run and per step: samples in, dropped (by reason), kept. Step order is the order the
    # filters scored in, which the scores map keeps; per-problem selection comes last.
    "filter_funnel": """
        WITH s AS (SELECT * FROM traces WHERE kind = 'sample'),
        stages AS (
            SELECT run_id, stage, min(pos) AS pos FROM (
                SELECT run_id, unnest(map_keys(scores)) AS stage,
                       unnest(range(1, len(map_keys(scores)) + 1)) AS pos FROM s)
            WHERE stage NOT IN ('pass_rate', 'rank') GROUP BY ALL
            UNION ALL SELECT DISTINCT run_id, 'selection', 1000000 FROM s WHERE scores['pass_rate'] IS NOT NULL),
        drops AS (SELECT run_id, rejected_stage AS stage, count(*) AS dropped, histogram(rejected_by) AS by_reason
                  FROM s WHERE NOT kept GROUP BY ALL),
        totals AS (SELECT run_id, count(*) AS samples FROM s GROUP BY ALL)
        SELECT st.run_id, row_number() OVER (PARTITION BY st.run_id ORDER BY st.pos) AS step, st.stage,
               t.samples - coalesce(sum(coalesce(d.dropped, 0)) OVER w, 0) AS "in",
               coalesce(d.dropped, 0) AS dropped,
               t.samples - coalesce(sum(coalesce(d.dropped, 0)) OVER w, 0) - coalesce(d.dropped, 0) AS kept,
               coalesce(d.by_reason, MAP {}) AS dropped_by_reason
        FROM stages st JOIN totals t USING (run_id) LEFT JOIN drops d USING (run_id, stage)
        WINDOW w AS (PARTITION BY st.run_id ORDER BY st.pos ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)""",
    "runs": "SELECT * FROM read_json({runs}, union_by_name = true, format = 'auto')",
}


# Short, repetitive columns get dictionary encoding; the long texts (prompt, completion, reasoning)
# gain nothing from it and it costs ingest time.
DICTIONARY_COLUMNS = ["run_id", "problem_id", "kind", "source", "domain", "reference", "teacher", "backend",
                      "sampling", "finish_reason", "verifier", "verdict_reason", "extracted_answer",
                      "rejected_by", "rejected_stage"]


class Warehouse:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()
        self.catalog_path = self.root / "catalog.duckdb"

    # -- parts -------------------------------------------------------------------------------
    def part_path(self, run_id: str, shard: int) -> Path:
        return self.root / "traces" / f"run_id={run_id}" / f"part-{shard:05d}.parquet"

    def part_exists(self, run_id: str, shard: int) -> bool:
        # The part is renamed into place last, so its presence means the shard finished.
        return self.part_path(run_id, shard).exists()

    def part_missing(self, run_id: str, shard: int, key: str | None = None) -> int | None:
        """None if the shard has no part; else how many samples it still lacks (0 = done).

        A part can be short when a backend gave up on some samples (a dead server): it keeps the
        samples that finished, and says in its metadata how many the shard should hold.
        """
        path = self.part_path(run_id, shard)
        if not path.exists():
            return None
        meta = pq.read_metadata(path)
        info = meta.metadata or {}
        expected = info.get(b"distill.expected")
        if key is not None and info.get(b"distill.shard_key", key.encode()) != key.encode():
            return max(1, int(expected or 0) - meta.num_rows)  # the shard's problems changed
        return max(0, int(expected) - meta.num_rows) if expected else 0

    def read_part(self, run_id: str, shard: int) -> list[Trace]:
        return from_table(pq.read_table(self.part_path(run_id, shard)))

    def write_part(self, run_id: str, shard: int, traces: list[Trace], expected: int | None = None,
                   key: str | None = None) -> Path:
        """Write one shard's traces atomically (see write_table). `expected`: samples the shard should
        hold (fewer are written when a backend gave up on some); `key`: which problems it is made of."""
        table = to_table(traces)
        meta = dict(table.schema.metadata or {})
        if expected is not None:
            meta[b"distill.expected"] = str(expected)
        if key is not None:
            meta[b"distill.shard_key"] = key
        table = table.replace_schema_metadata(meta)
        return self.write_table(run_id, shard, table)

    def write_table(self, run_id: str, shard: int, table: pa.Table) -> Path:
        """Write a part from an Arrow table of SCHEMA: a temporary name in the same folder, then rename.

        A crash before the rename leaves only a `.tmp-*` file, which no reader globs and the next
        write of the shard replaces.
        """
        if not table.schema.equals(SCHEMA, check_metadata=False):
            raise ValueError("a part must have exactly warehouse.schema.SCHEMA")
        return write_atomic(self.part_path(run_id, shard), table)

    def parts(self) -> list[Path]:
        return sorted((self.root / "traces").glob("run_id=*/part-*.parquet"))

    # -- checkpoints: a shard's finished samples, before the shard is done ------------------------
    def checkpoint_paths(self, run_id: str, shard: int) -> list[Path]:
        return sorted((self.root / "traces" / f"run_id={run_id}").glob(f"ckpt-{shard:05d}-*.parquet"))

    def write_checkpoint(self, run_id: str, shard: int, traces: list[Trace]) -> Path:
        """A small part file of raw samples (not yet verified or filtered), under a name no other writer
        uses; atomic like every part. The shard's part, once written, holds them all and replaces them."""
        name = f"ckpt-{shard:05d}-{time.time_ns()}-{os.getpid()}-{threading.get_ident()}.parquet"
        return write_atomic(self.root / "traces" / f"run_id={run_id}" / name, to_table(traces))

    def checkpointed_shards(self, run_id: str) -> set[int]:
        """The shards of a run that have checkpoint files (`ckpt-<shard>-…`), from one listing of its folder."""
        return {int(p.name.split("-")[1]) for p in (self.root / "traces" / f"run_id={run_id}").glob("ckpt-*.parquet")}

    def drop_checkpoints(self, run_id: str, shard: int) -> None:
        """After the shard's part is written: its checkpoints hold nothing the part does not."""
        for path in self.checkpoint_paths(run_id, shard):
            path.unlink(missing_ok=True)

    # -- the generation cache ---------------------------------------------------------------------
    def find_samples(self, trace_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """Where stored samples with these ids are: {trace_id: (file, the run that generated it)}.

        Looks in every run's parts and checkpoints (journey rows are not samples). A part is preferred
        over a checkpoint; among copies of one sample any will do: the same id is the same sample.
        """
        wanted = pa.table({"trace_id": pa.array(sorted(set(trace_ids)), pa.string())})
        files = [str(p) for p in (self.root / "traces").glob("run_id=*/*.parquet")
                 if p.name.startswith(("part-", "ckpt-"))]
        if not files or not wanted.num_rows:
            return {}
        con = duckdb.connect()
        try:
            con.register("wanted", wanted)
            rows = con.execute(
                f"SELECT trace_id, filename, coalesce(reused_from, run_id) FROM read_parquet({_sql_list(files)}, "
                "filename = true, union_by_name = true) WHERE kind = 'sample' AND trace_id IN (SELECT trace_id FROM "
                "wanted) ORDER BY trace_id, starts_with(parse_filename(filename), 'ckpt-'), filename").fetchall()
        finally:
            con.close()
        found: dict[str, tuple[str, str]] = {}
        for trace_id, filename, origin in rows:
            found.setdefault(trace_id, (filename, origin))
        return found

    def read_samples(self, found: dict[str, tuple[str, str]]) -> list[Trace]:
        """The stored rows `find_samples` located, one per trace_id."""
        by_file: dict[str, list[str]] = {}
        for trace_id, (path, _) in found.items():
            by_file.setdefault(path, []).append(trace_id)
        out: dict[str, Trace] = {}
        for path, ids in sorted(by_file.items()):
            for t in from_table(pq.read_table(path, filters=[("trace_id", "in", ids)])):
                out.setdefault(t.trace_id, t)
        return [out[i] for i in sorted(out)]

    # -- the shard plan ---------------------------------------------------------------------------
    def plan_path(self, run_id: str) -> Path:
        return self.root / "plans" / f"{run_id}.json"

    def read_plan(self, run_id: str) -> list[list[str]] | None:
        path = self.plan_path(run_id)
        return json.loads(path.read_text())["shards"] if path.exists() else None

    def write_plan(self, run_id: str, shards: list[list[str]]) -> Path:
        return write_text(self.plan_path(run_id), json.dumps({"run_id": run_id, "shards": shards}))

    def journey_path(self, run_id: str, mode: str) -> Path:
        return self.root / "traces" / f"run_id={run_id}" / f"journey-{mode}.parquet"

    def write_journeys(self, run_id: str, mode: str, traces: list[Trace]) -> Path:
        """All journey rows of one run and mode in one file, written atomically; a rebuild replaces it."""
        if any(t.kind != "journey" or t.run_id != run_id for t in traces):
            raise ValueError(f"write_journeys: every row must be kind 'journey' of run {run_id}")
        return write_atomic(self.journey_path(run_id, mode), to_table(traces))

    # -- runs --------------------------------------------------------------------------------
    def run_path(self, run_id: str) -> Path:
        return self.root / "runs" / f"{run_id}.json"

    def write_run(self, run: dict) -> Path:
        """Write a run record, in the current shape (RECORD_VERSION)."""
        text = json.dumps({**run, "record_version": RECORD_VERSION}, indent=2, sort_keys=True, default=str)
        with self._lock("runs"):  # so that read_run's upgrade never writes over a newer record
            return write_text(self.run_path(run["run_id"]), text)

    def read_run(self, run_id: str) -> dict | None:
        """The run record, in the current shape: a record written by an older version of distill is upgraded
        (upgrade_run) and, where the warehouse is writable, written back, so the upgrade happens once."""
        path = self.run_path(run_id)
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        if record.get("record_version", 1) >= RECORD_VERSION:
            return record
        upgraded = upgrade_run(record)
        if os.access(path.parent, os.W_OK):
            try:
                with self._lock("runs"):
                    # read again under the lock: a writer may have replaced the old record since
                    if json.loads(path.read_text()).get("record_version", 1) < RECORD_VERSION:
                        write_text(path, json.dumps(upgraded, indent=2, sort_keys=True, default=str))
            except OSError:
                pass  # e.g. a full disk: the upgrade is redone at the next read
        return upgraded

    # -- catalog -----------------------------------------------------------------------------
    @contextmanager
    def _lock(self, name: str = "catalog"):
        """One writer at a time (of the catalog, or of run records), across processes on this machine."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{name}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _empty_part(self) -> Path:
        # A zero-row file with the full schema, so `traces` binds (and has every column) before
        # any run has written a part. It sits outside the run_id= folders and counts no rows.
        # Rewritten when SCHEMA has changed since (a column added): the views name every column,
        # and parts written before the change read the new ones as NULL (union_by_name).
        path = self.root / "traces" / "_schema.parquet"
        try:
            current = pq.read_schema(path).equals(SCHEMA, check_metadata=False)
        except (OSError, pa.ArrowInvalid):  # missing, or unreadable: it holds no data, so write it anew
            current = False
        if not current:
            write_atomic(path, pa.Table.from_pylist([], schema=SCHEMA))
        return path

    def refresh(self) -> Path:
        """(Re)create the catalog's views over the files now on disk."""
        with self._lock():
            # Globs, not file lists: parts written after this refresh (by this or another process)
            # are in the view at once. `.tmp-*` files never match `part-*`.
            parts = [str(self._empty_part())]
            if self.parts():  # DuckDB refuses a glob that matches nothing
                parts.append(str(self.root / "traces" / "run_id=*" / "part-*.parquet"))
            if any((self.root / "traces").glob("run_id=*/journey-*.parquet")):
                parts.append(str(self.root / "traces" / "run_id=*" / "journey-*.parquet"))
            runs = [str(self.root / "runs" / "*.json")] if any((self.root / "runs").glob("*.json")) else []
            # Built under a temporary name and renamed over the catalog: a reader holding the old
            # file keeps reading it, and no writer ever needs a lock on the file readers have open
            # (DuckDB lets one process write a database file, and not while others read it).
            for stale in self.root.glob(".tmp-catalog-*"):  # left by a crashed refresh; we hold the lock
                stale.unlink(missing_ok=True)
            tmp = self.root / f".tmp-catalog-{os.getpid()}-{threading.get_ident()}.duckdb"
            con = duckdb.connect(str(tmp))
            try:
                con.execute(f"CREATE OR REPLACE VIEW traces AS {VIEWS['traces'].format(parts=_sql_list(parts))}")
                for name in ("accepted", "funnel", "journeys", "pass_rates", "problems", "filter_funnel"):
                    con.execute(f"CREATE OR REPLACE VIEW {name} AS {VIEWS[name]}")
                if any((self.root / "evals").glob("*.json")):
                    evals = _sql_list([str(self.root / "evals" / "*.json")])
                    # every stored field but the per-problem detail (texts included), old files' missing ones NULL
                    con.execute(f"CREATE OR REPLACE VIEW evals AS SELECT * EXCLUDE (per_problem) "
                                f"FROM read_json({evals}, union_by_name = true, format = 'auto')")
                else:
                    con.execute("CREATE OR REPLACE VIEW evals AS SELECT NULL::VARCHAR AS eval_id WHERE false")
                if runs:
                    con.execute(f"CREATE OR REPLACE VIEW runs AS {VIEWS['runs'].format(runs=_sql_list(runs))}")
                else:
                    con.execute("CREATE OR REPLACE VIEW runs AS SELECT NULL::VARCHAR AS run_id WHERE false")
            finally:
                con.close()
            os.replace(tmp, self.catalog_path)
        return self.catalog_path

    def refresh_if_writable(self) -> None:
        """Bring the views up to date (new view definitions, a moved root) when we may write here."""
        if self.catalog_path.exists() and os.access(self.root, os.W_OK):
            try:
                self.refresh()
            except duckdb.IOException:
                pass  # e.g. a full or read-only disk: the existing catalog still answers, if older

    def connect(self, read_only: bool = True) -> duckdb.DuckDBPyConnection:
        if not self.catalog_path.exists():
            raise DistillError(
                f"no warehouse at {self.root} (no catalog.duckdb): run `distill run RECIPE` first, "
                "or pass --warehouse"
            )
        return duckdb.connect(str(self.catalog_path), read_only=read_only)

    def query(self, sql: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
        con = self.connect(read_only=True)
        try:
            check_read_only(con, sql)
            cur = con.execute(sql, params or [])
            cols = [d[0] for d in cur.description] if cur.description else []
            return cols, cur.fetchall()
        finally:
            con.close()



# The shape of runs/<run_id>.json. 1 (no record_version): written before the record kept every call of a run
# (`calls`) and every shard's filter report (`filters_by_shard`); its timings and filter report are its last
# call's. 2: both kept, and `timings` summed over the calls.
RECORD_VERSION = 2


def upgrade_run(record: dict) -> dict:
    """A run record of an older shape in the current one; the one place that knows the older shapes.

    A record of version 1 becomes one call, with its timings. When that call resumed nothing it wrote every
    shard; when it resumed a run, its shards_done is None: earlier calls made samples the timings miss
    (report.carried_call). Its filter report, of shards unknown, is kept as shard -1.
    """
    rec = dict(record)
    if rec.get("record_version", 1) < 2:
        if "calls" not in rec:
            rec["calls"] = [{"started_at": rec.get("started_at"), "finished_at": rec.get("finished_at"),
                             "status": rec.get("status"), "timings": rec.get("timings") or {},
                             "shards_done": None if rec.get("shards_resumed") else rec.get("shards", 0)}]
        if "filters_by_shard" not in rec:
            rec["filters_by_shard"] = [{"shard": -1, "filters": rec["filters"]}] if rec.get("filters") else []
    rec["record_version"] = RECORD_VERSION
    return rec


# Queries only. The catalog is opened read-only as well; this check gives the clear message
# (DuckDB's own would be "Can only delete from base table") and also stops ATTACH/INSTALL/COPY.
READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    for stmt in con.extract_statements(sql):
        kind = stmt.type.name
        if kind not in READ_ONLY_STATEMENTS:
            raise DistillError(f"the warehouse is read-only here: {kind} statements are not allowed "
                                "(only SELECT queries; use --out to save a result)")


def write_atomic(path: Path, table: pa.Table) -> Path:
    """A Parquet file of the warehouse's layout (zstd, dictionary columns), written whole or not at all."""
    with replacing(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=DICTIONARY_COLUMNS)
    return path


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"
