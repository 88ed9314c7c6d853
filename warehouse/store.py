"""Parquet part files plus a DuckDB catalog of views over them.

<root>/traces/run_id=<id>/part-<shard>.parquet   one file per shard: its samples, verified and filtered
<root>/traces/run_id=<id>/ckpt-<shard>-*.parquet samples of a shard still generating, raw, written as they
                                                 finish; folded into the part when the shard completes
<root>/traces/run_id=<id>/journey-<mode>.parquet journey rows built from the run's samples (kind = journey)
<root>/runs/<run_id>.json                        what ran: recipe, versions, counts, timings
<root>/plans/<run_id>.json                       which problems each shard holds: extended, never reordered
<root>/judge_cache/*.parquet                     the LLM judge's answers, by (answer, reference, judge, prompt)
<root>/ratings/*.parquet                         difficulty ratings of problems by judge models (`distill rate`)
<root>/catalog.duckdb                            views only; rebuilt from the files at any time

The files are the truth and the catalog is derived from them, so a lost or stale catalog costs a
refresh, never data. Every stored sample, in a part or a checkpoint of any run, is in the generation
cache (`find_samples`): a run that needs a sample with the same trace_id copies it instead of paying
the teacher again.
"""
from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distill.errors import DistillError
from distill.files import remove_leftovers, replacing, write_text
from distill.warehouse.schema import (DECISIONS_SCHEMA, JUDGE_CACHE_SCHEMA, RATINGS_SCHEMA, RUN_COLUMNS, SCHEMA,
                                      Trace, from_table, to_table)
from distill.warehouse.storage import Storage

# Queries the catalog answers. `funnel` counts one run's way from problems to kept samples.
VIEWS = {
    # raw_traces: the rows as the parts hold them; decisions: the warehouse-wide decisions (Warehouse._create_views)
    # Every row with the decisions overlaid: a kept row that a decision drops reads kept = false with the
    # decision's reason and stage; each deciding stage's score joins `scores`. A row two files decide on is
    # dropped if either drops it; the first dropping stage by name gives the reason (decontam, then dedup).
    "traces": """
        SELECT r.* REPLACE (
                   CASE WHEN d.scores IS NULL THEN r.scores ELSE map_concat(r.scores, d.scores) END AS scores,
                   CASE WHEN r.kept AND d.kept = false THEN false ELSE r.kept END AS kept,
                   CASE WHEN r.kept AND d.kept = false THEN d.rejected_by ELSE r.rejected_by END AS rejected_by,
                   CASE WHEN r.kept AND d.kept = false THEN d.stage ELSE r.rejected_stage END AS rejected_stage)
        FROM raw_traces r LEFT JOIN (
            SELECT run_id, trace_id, bool_and(kept) AS kept,
                   map_from_entries(list({'k': stage, 'v': score} ORDER BY stage)) AS scores,
                   arg_min(rejected_by, stage) FILTER (WHERE NOT kept) AS rejected_by,
                   min(stage) FILTER (WHERE NOT kept) AS stage
            FROM (SELECT run_id, trace_id, stage, bool_and(kept) AS kept, max(score) AS score,
                         min(rejected_by) AS rejected_by FROM decisions GROUP BY ALL)
            GROUP BY ALL) d ON r.run_id = d.run_id AND r.trace_id = d.trace_id""",
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
    # pass_rate: the one the run's selection used (scores['pass_rate'], by the verdict judge_uses picks: with an
    # LLM judge it may differ from `correct` / `samples`, which counts the rules' verdicts); computed from
    # `correct` for rows no selection scored.
    "pass_rates": """
        SELECT run_id, problem_id, any_value(source) AS source,
               count(*) AS samples, count(*) FILTER (WHERE correct) AS correct,
               coalesce(any_value(scores['pass_rate']), count(*) FILTER (WHERE correct) / count(*)) AS pass_rate,
               count(*) FILTER (WHERE kept) AS kept
        FROM traces WHERE kind = 'sample' GROUP BY run_id, problem_id""",
    # Where the rules and the LLM judge disagree (both gave a verdict): the parser's misses and the judge's
    # over-acceptance, to read before choosing judge_uses.
    "verdict_disagreements": """
        SELECT run_id, trace_id, problem_id, reference, extracted_answer, correct, judge_correct, judge_model,
               verifier, verdict_reason, judge_reason, kept, rejected_by
        FROM traces WHERE correct IS NOT NULL AND judge_correct IS NOT NULL AND correct <> judge_correct""",
    # Difficulty ratings by judge models (`distill rate`): the latest per problem, rater and prompt version.
    "ratings": """
        SELECT problem_id, rater, prompt_version, arg_max(rating, created_at) AS rating,
               arg_max(reply, created_at) AS reply, max(created_at) AS created_at
        FROM raw_ratings GROUP BY ALL""",
    # How hard a problem was: 0 easy … 1 hard, and in five levels (1 easiest … 5 hardest). `basis` says what it
    # was measured from: 'pass_rate' (the run's own samples; level 1: pass rate >= 0.8, 2: >= 0.6, … 5: < 0.2),
    # or 'rating' (a judge's 1–10 rating of the question, `distill rate`: (rating - 1) / 9, one row per rater, on
    # every run that has the problem).
    "difficulty": """
        SELECT run_id, problem_id, source, samples, correct, pass_rate,
               1 - pass_rate AS difficulty,
               (5 - least(4, floor(pass_rate * 5)))::INTEGER AS level,
               'pass_rate' AS basis, NULL::VARCHAR AS rater
        FROM pass_rates
        UNION ALL
        SELECT p.run_id, p.problem_id, p.source, p.samples, p.correct, p.pass_rate,
               (r.rating - 1) / 9 AS difficulty,
               (1 + least(4, floor((r.rating - 1) / 9 * 5)))::INTEGER AS level,
               'rating' AS basis, r.rater
        FROM pass_rates p JOIN (SELECT problem_id, rater, arg_max(rating, created_at) AS rating
                                FROM ratings WHERE rating IS NOT NULL GROUP BY ALL) r USING (problem_id)""",
    "problems": """
        SELECT problem_id, any_value(source) AS source, any_value(domain) AS domain,
               any_value(prompt[len(prompt)].content) AS question, any_value(reference) AS reference,
               count(DISTINCT run_id) AS runs, count(*) AS samples
        FROM traces WHERE kind = 'sample' GROUP BY problem_id""",
    # RL runs (`distill rl`): per training step, the rollouts' mean rewards (the weighted total `reward` and
    # each reward; an accuracy of NULL, unverifiable, counts in none) and completion length: the reward curve.
    "rollout_steps": """
        SELECT run_id, scores['step']::INTEGER AS step, count(*) AS rollouts,
               avg(scores['reward']) AS reward, avg(scores['reward_accuracy']) AS accuracy,
               avg(scores['reward_format']) AS format, avg(scores['reward_language']) AS language,
               avg(completion_tokens) AS completion_tokens,
               count(*) FILTER (WHERE finish_reason = 'length') AS truncated
        FROM traces WHERE kind = 'rollout' GROUP BY ALL""",
    # Per run and per step: samples in, dropped (by reason), kept. Step order is the order the
    # filters scored in, which the scores map keeps; per-problem selection comes last.
    "filter_funnel": """
        WITH s AS (SELECT * FROM traces WHERE kind = 'sample'),
        stages AS (
            SELECT run_id, stage, min(pos) AS pos FROM (
                SELECT run_id, unnest(map_keys(scores)) AS stage,
                       unnest(range(1, len(map_keys(scores)) + 1)) AS pos FROM s)
            WHERE stage NOT IN ('pass_rate', 'rank') AND NOT starts_with(stage, 'global_') GROUP BY ALL
            UNION ALL SELECT DISTINCT run_id, 'selection', 1000000 FROM s WHERE scores['pass_rate'] IS NOT NULL
            -- warehouse-wide decisions come after everything the shards decided
            UNION ALL SELECT run_id, stage, 2000000 + row_number() OVER (PARTITION BY run_id ORDER BY stage)
                      FROM (SELECT DISTINCT run_id, stage FROM decisions)),
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
}


# Short, repetitive columns get dictionary encoding; the long texts (prompt, completion, reasoning)
# gain nothing from it and it costs ingest time.
DICTIONARY_COLUMNS = ["run_id", "problem_id", "kind", "source", "domain", "reference", "teacher", "backend",
                      "sampling", "finish_reason", "verifier", "verdict_reason", "extracted_answer",
                      "judge_model", "judge_reason", "rejected_by", "rejected_stage"]


class Warehouse:
    """A warehouse root: a local folder (with a DuckDB catalog file of views) or an object-store URL
    (s3://bucket/prefix, any fsspec URL), read by DuckDB through Arrow datasets. See warehouse.storage."""

    def __init__(self, root: str | os.PathLike):
        self.storage = Storage(root)
        self.local = self.storage.local
        # a Path for a local folder (as before), the URL for object storage: str(wh.root) names it either way
        self.root = self.storage.path if self.local else self.storage.url
        self.catalog_path = self.storage.path / "catalog.duckdb" if self.local else None
        self._mirror: Path | None = None

    def _at(self, rel: str) -> Path | str:
        """A file's location as a user names it: a Path in a local warehouse, else its URL."""
        return self.storage.path / rel if self.local else self.storage.show(rel)

    def _exists(self, rel: str) -> bool:
        return self.storage.exists(rel)

    # -- parts -------------------------------------------------------------------------------
    @staticmethod
    def _part(run_id: str, shard: int) -> str:
        return f"traces/run_id={run_id}/part-{shard:05d}.parquet"

    def part_path(self, run_id: str, shard: int) -> Path | str:
        return self._at(self._part(run_id, shard))

    def part_exists(self, run_id: str, shard: int) -> bool:
        # The part is written whole and last (renamed into place, or one PUT), so its presence means the shard finished.
        return self._exists(self._part(run_id, shard))

    def part_missing(self, run_id: str, shard: int, key: str | None = None) -> int | None:
        """None if the shard has no part; else how many samples it still lacks (0 = done).

        A part can be short when a backend gave up on some samples (a dead server): it keeps the
        samples that finished, and says in its metadata how many the shard should hold.
        """
        try:
            meta = self.storage.parquet_metadata(self._part(run_id, shard))
        except FileNotFoundError:
            return None
        info = meta.metadata or {}
        expected = info.get(b"distill.expected")
        if key is not None and info.get(b"distill.shard_key", key.encode()) != key.encode():
            return max(1, int(expected or 0) - meta.num_rows)  # the shard's problems changed
        return max(0, int(expected) - meta.num_rows) if expected else 0

    def read_part(self, run_id: str, shard: int) -> list[Trace]:
        return from_table(self.storage.read_parquet(self._part(run_id, shard)))

    def write_part(self, run_id: str, shard: int, traces: list[Trace], expected: int | None = None,
                   key: str | None = None) -> Path | str:
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

    def write_table(self, run_id: str, shard: int, table: pa.Table) -> Path | str:
        """Write a part from an Arrow table of SCHEMA, whole or not at all: a temporary name and a rename
        in a local folder, one PUT on object storage. A crash leaves nothing a reader sees."""
        if not table.schema.equals(SCHEMA, check_metadata=False):
            raise ValueError("a part must have exactly warehouse.schema.SCHEMA")
        self._write_parquet(self._part(run_id, shard), table)
        return self.part_path(run_id, shard)

    def _write_parquet(self, rel: str, table: pa.Table) -> str:
        """A Parquet file of the warehouse's layout (zstd, dictionary columns), written whole or not at all."""
        return self.storage.write_parquet(rel, table, compression="zstd", use_dictionary=DICTIONARY_COLUMNS)

    def _parts(self) -> list[str]:
        return self.storage.list("traces", "run_id=*/part-*.parquet", recursive=True)

    def parts(self) -> list[Path | str]:
        return [self._at(r) for r in self._parts()]

    # -- checkpoints: a shard's finished samples, before the shard is done ------------------------
    def _checkpoints(self, run_id: str, shard: int | None = None) -> list[str]:
        pattern = "ckpt-*.parquet" if shard is None else f"ckpt-{shard:05d}-*.parquet"
        return self.storage.list(f"traces/run_id={run_id}", pattern)

    def checkpoint_paths(self, run_id: str, shard: int) -> list[Path | str]:
        return [self._at(r) for r in self._checkpoints(run_id, shard)]

    def write_checkpoint(self, run_id: str, shard: int, traces: list[Trace]) -> Path | str:
        """A small part file of raw samples (not yet verified or filtered), under a name no other writer
        on any machine uses; written whole like every part. The shard's part, once written, holds them all
        and replaces them."""
        rel = f"traces/run_id={run_id}/ckpt-{shard:05d}-{time.time_ns()}-{uuid.uuid4().hex[:12]}.parquet"
        self._write_parquet(rel, to_table(traces))
        return self._at(rel)

    def checkpointed_shards(self, run_id: str) -> set[int]:
        """The shards of a run that have checkpoint files (`ckpt-<shard>-…`), from one listing of its folder."""
        return {int(r.rsplit("/", 1)[1].split("-")[1]) for r in self._checkpoints(run_id)}

    def drop_checkpoints(self, run_id: str, shard: int) -> None:
        """After the shard's part is written: its checkpoints hold nothing the part does not."""
        for rel in self._checkpoints(run_id, shard):
            self.storage.delete(rel)

    # -- the generation cache ---------------------------------------------------------------------
    def find_samples(self, trace_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """Where stored samples with these ids are: {trace_id: (file, the run that generated it)}.

        Looks in every run's parts and checkpoints (journey rows are not samples). A part is preferred
        over a checkpoint; among copies of one sample any will do: the same id is the same sample.
        """
        wanted = sorted(set(trace_ids))
        files = [r for r in self.storage.list("traces", "run_id=*/*.parquet", recursive=True)
                 if r.rsplit("/", 1)[1].startswith(("part-", "ckpt-")) and r.count("/") == 2]
        if not files or not wanted:
            return {}
        scanner = self.storage.dataset(files, SCHEMA).scanner(
            columns={"trace_id": pc.field("trace_id"), "origin": pc.coalesce(pc.field("reused_from"), pc.field("run_id"))},
            filter=(pc.field("kind") == "sample") & pc.field("trace_id").isin(pa.array(wanted, pa.string())))
        rows = []
        for batch in scanner.scan_batches():  # each batch knows the file it came from
            path = batch.fragment.path
            rows += [(t, path, o) for t, o in zip(batch.record_batch.column(0).to_pylist(),
                                                   batch.record_batch.column(1).to_pylist())]
        rows.sort(key=lambda r: (r[0], r[1].rsplit("/", 1)[1].startswith("ckpt-"), r[1]))
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
        base = self.storage.base.rstrip("/") + "/"
        for path, ids in sorted(by_file.items()):
            rel = path[len(base):] if path.startswith(base) else path
            for t in from_table(self.storage.read_parquet(rel, filters=[("trace_id", "in", ids)])):
                out.setdefault(t.trace_id, t)
        return [out[i] for i in sorted(out)]

    # -- the shard plan ---------------------------------------------------------------------------
    def plan_path(self, run_id: str) -> Path | str:
        return self._at(f"plans/{run_id}.json")

    def read_plan(self, run_id: str) -> list[list[str]] | None:
        plan = self._read_json(f"plans/{run_id}.json")
        return plan["shards"] if plan is not None else None

    def write_plan(self, run_id: str, shards: list[list[str]]) -> Path | str:
        self.storage.write_text(f"plans/{run_id}.json", json.dumps({"run_id": run_id, "shards": shards}))
        return self.plan_path(run_id)

    # -- journeys ---------------------------------------------------------------------------------
    @staticmethod
    def _journey(run_id: str, mode: str) -> str:
        return f"traces/run_id={run_id}/journey-{mode}.parquet"

    def journey_path(self, run_id: str, mode: str) -> Path | str:
        return self._at(self._journey(run_id, mode))

    def journey_exists(self, run_id: str, mode: str) -> bool:
        return self._exists(self._journey(run_id, mode))

    def write_journeys(self, run_id: str, mode: str, traces: list[Trace]) -> Path | str:
        """All journey rows of one run and mode in one file, written atomically; a rebuild replaces it."""
        if any(t.kind != "journey" or t.run_id != run_id for t in traces):
            raise ValueError(f"write_journeys: every row must be kind 'journey' of run {run_id}")
        self._write_parquet(self._journey(run_id, mode), to_table(traces))
        return self.journey_path(run_id, mode)

    def read_journeys(self, run_id: str, mode: str) -> list[Trace]:
        try:
            return from_table(self.storage.read_parquet(self._journey(run_id, mode)))
        except FileNotFoundError:
            return []

    def journey_checkpoints(self, run_id: str, mode: str) -> list[str]:
        """Batches of a journey build that has not ended yet, oldest first (relative paths)."""
        return self.storage.list(f"traces/run_id={run_id}/.journey-{mode}", "*.parquet")

    def write_journey_checkpoint(self, run_id: str, mode: str, traces: list[Trace]) -> None:
        rel = f"traces/run_id={run_id}/.journey-{mode}/{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
        self._write_parquet(rel, to_table(traces))

    # -- decisions over the whole warehouse (global dedup, decontamination) ------------------------
    @staticmethod
    def decisions_name(stage: str, run_ids: Iterable[str]) -> str:
        """One file per stage and set of runs: deciding again over the same runs replaces it."""
        key = hashlib.sha256("\n".join(sorted(set(run_ids))).encode()).hexdigest()[:12]
        return f"decisions/{stage}-{key}.parquet"

    def write_decisions(self, stage: str, run_ids: Iterable[str], table: pa.Table) -> Path | str:
        """Store a stage's decisions (DECISIONS_SCHEMA) over these runs, whole or not at all; the views
        overlay them on the parts at the next query (a local catalog: at the next refresh)."""
        run_ids = sorted(set(run_ids))
        if not table.schema.equals(DECISIONS_SCHEMA, check_metadata=False):
            raise ValueError("decisions must have exactly warehouse.schema.DECISIONS_SCHEMA")
        table = table.replace_schema_metadata({b"distill.runs": json.dumps(run_ids), b"distill.stage": stage})
        rel = self.decisions_name(stage, run_ids)
        self.storage.write_parquet(rel, table, compression="zstd")
        return self._at(rel)

    def _decisions(self) -> list[str]:
        return self._side_files("decisions")

    # -- the judge's cache and its difficulty ratings -------------------------------------------
    # Small files under a name no other writer uses, one per batch of questions, written as soon as the
    # batch is answered: a crash loses at most the batch in flight, and any root (S3 too) takes them.
    def _side_files(self, folder: str) -> list[str]:
        return [r for r in self.storage.list(folder, "*.parquet") if not r.endswith("/_schema.parquet")]

    def _lookup(self, folder: str, schema: pa.Schema, keys: Iterable[str]) -> dict[str, dict]:
        wanted = sorted(set(keys))
        files = self._side_files(folder)
        if not files or not wanted:
            return {}
        table = self.storage.dataset(files, schema).to_table(filter=pc.field("key").isin(pa.array(wanted, pa.string())))
        return {r["key"]: r for r in sorted(table.to_pylist(), key=lambda r: r["created_at"])}  # the latest wins

    def _append(self, folder: str, schema: pa.Schema, rows: list[dict]) -> None:
        if rows:
            rel = f"{folder}/{time.time_ns()}-{uuid.uuid4().hex[:12]}.parquet"
            self.storage.write_parquet(rel, pa.Table.from_pylist(rows, schema=schema), compression="zstd")

    def judged(self, keys: Iterable[str]) -> dict[str, dict]:
        """The judge's stored answers ({key: JUDGE_CACHE_SCHEMA row}) for these keys, of any run."""
        return self._lookup("judge_cache", JUDGE_CACHE_SCHEMA, keys)

    def write_judged(self, rows: list[dict]) -> None:
        self._append("judge_cache", JUDGE_CACHE_SCHEMA, rows)

    def rated(self, keys: Iterable[str]) -> dict[str, dict]:
        """Stored difficulty ratings ({key: RATINGS_SCHEMA row}) for these keys."""
        return self._lookup("ratings", RATINGS_SCHEMA, keys)

    def write_ratings(self, rows: list[dict]) -> None:
        self._append("ratings", RATINGS_SCHEMA, rows)

    # -- runs --------------------------------------------------------------------------------
    def run_path(self, run_id: str) -> Path | str:
        return self._at(f"runs/{run_id}.json")

    def run_ids(self) -> list[str]:
        return [r[len("runs/"):-len(".json")] for r in self.storage.list("runs", "*.json")]

    def write_run(self, run: dict) -> Path | str:
        """Write a run record, in the current shape (RECORD_VERSION)."""
        text = json.dumps({**run, "record_version": RECORD_VERSION}, indent=2, sort_keys=True, default=str)
        with self._lock("runs"):  # so that read_run's upgrade never writes over a newer record
            self.storage.write_text(f"runs/{run['run_id']}.json", text)
        return self.run_path(run["run_id"])

    def _read_json(self, rel: str) -> dict | None:
        try:
            return self.storage.read_json(rel)
        except FileNotFoundError:
            return None

    def worker_records(self, run_id: str) -> list[dict]:
        """The records of the workers that share a run (`distill run --worker K/N`), one file each."""
        out = []
        for rel in self.storage.list(f"runs/{run_id}", "worker-*.json"):
            rec = self._read_json(rel)
            if rec is not None:
                out.append(rec)
        return out

    def write_worker_run(self, run: dict, worker: int, workers: int) -> Path | str:
        """A worker's record, in a file no other worker writes; then the run's record, merged from every
        worker's. Merged again until no worker's file changed meanwhile, so the last writer's merge holds
        every worker's last word whatever order they finish in (no lock: a store that lists what was written)."""
        rel = f"runs/{run['run_id']}/worker-{worker}-of-{workers}.json"
        self.storage.write_text(rel, json.dumps({**run, "record_version": RECORD_VERSION}, indent=2,
                                                sort_keys=True, default=str))
        seen = None
        for _ in range(5):
            records = self.worker_records(run["run_id"])
            if records == seen:
                break
            self.write_run(merge_runs(records))
            seen = records
        return self._at(rel)

    def read_run(self, run_id: str) -> dict | None:
        """The run record, in the current shape: merged from its workers' records when several workers
        share the run; a record written by an older version of distill is upgraded (upgrade_run) and, in a
        local warehouse that is writable, written back, so the upgrade happens once."""
        record = self._read_json(f"runs/{run_id}.json")
        workers = self.worker_records(run_id) if record is None or record.get("workers") else []
        if workers:
            return merge_runs(workers)
        if record is None:
            return None
        if record.get("record_version", 1) >= RECORD_VERSION:
            return record
        upgraded = upgrade_run(record)
        path = self.storage.path / "runs" / f"{run_id}.json" if self.local else None
        if path is not None and os.access(path.parent, os.W_OK):
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
    def _lock(self, name: str):
        """One writer at a time of a local warehouse's run records on this machine, so that read_run's
        upgrade never writes over a newer record; object storage has no old records to upgrade."""
        if not self.local:
            yield
            return
        self.storage.path.mkdir(parents=True, exist_ok=True)
        with open(self.storage.path / f".{name}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _empty(self, rel: str, schema: pa.Schema) -> Path:
        # A zero-row file with the full schema, so a view binds (and has every column) before any file of
        # its kind exists. It counts no rows. Rewritten when the schema has changed since (a column added):
        # the views name every column, and files written before the change read the new ones as NULL.
        path = self.storage.path / rel
        try:
            current = pq.read_schema(path).equals(schema, check_metadata=False)
        except (OSError, pa.ArrowInvalid):  # missing, or unreadable: it holds no data, so write it anew
            current = False
        if not current:
            write_atomic(path, pa.Table.from_pylist([], schema=schema))
        return path

    def _create_views(self, con: duckdb.DuckDBPyConnection, parts: str, decisions: str, runs: str | None,
                      evals: str | None, ratings: str) -> None:
        """The views, given SQL for the parts (traces and journeys), the decisions files, the run
        records and the eval results (None: none stored yet), and the ratings files."""
        con.execute(f"CREATE OR REPLACE VIEW raw_traces AS SELECT * FROM {parts}")
        con.execute(f"CREATE OR REPLACE VIEW decisions AS SELECT * FROM {decisions}")
        con.execute(f"CREATE OR REPLACE VIEW raw_ratings AS SELECT * FROM {ratings}")
        for name in ("traces", "accepted", "funnel", "journeys", "pass_rates", "problems", "filter_funnel",
                     "verdict_disagreements", "ratings", "difficulty",
                     "rollout_steps"):
            con.execute(f"CREATE OR REPLACE VIEW {name} AS {VIEWS[name]}")
        if evals:
            # every stored field but the per-problem detail (texts included), old files' missing ones NULL
            con.execute(f"CREATE OR REPLACE VIEW evals AS SELECT * EXCLUDE (per_problem) "
                        f"FROM read_json({evals}, union_by_name = true, format = 'auto')")
        else:
            con.execute("CREATE OR REPLACE VIEW evals AS SELECT NULL::VARCHAR AS eval_id WHERE false")
        if runs:
            con.execute(f"CREATE OR REPLACE VIEW runs AS SELECT * FROM read_json({runs}, union_by_name = true, "
                        "format = 'auto')")
        else:
            empty = ", ".join(f"NULL::{t} AS {c}" for c, t in RUN_COLUMNS)
            con.execute(f"CREATE OR REPLACE VIEW runs AS SELECT {empty} WHERE false")

    def refresh(self) -> Path | str:
        """(Re)create a local warehouse's catalog of views over the files now on disk. Object storage has
        no catalog file: each connection lists the store (see connect)."""
        if not self.local:
            self.storage.list("runs")  # a clear error now if the store is unreachable
            return self.storage.url
        root = self.storage.path
        root.mkdir(parents=True, exist_ok=True)
        # Globs, not file lists: parts written after this refresh (by this or another process) are in the
        # view at once. Temporary files (`.tmp-*`) never match `part-*`.
        parts = [str(self._empty("traces/_schema.parquet", SCHEMA))]
        if self._parts():  # DuckDB refuses a glob that matches nothing
            parts.append(str(root / "traces" / "run_id=*" / "part-*.parquet"))
        if any((root / "traces").glob("run_id=*/journey-*.parquet")):
            parts.append(str(root / "traces" / "run_id=*" / "journey-*.parquet"))
        self._empty("decisions/_schema.parquet", DECISIONS_SCHEMA)
        decisions = [str(root / "decisions" / "*.parquet")]
        self._empty("ratings/_schema.parquet", RATINGS_SCHEMA)
        ratings = [str(root / "ratings" / "*.parquet")]
        runs = [str(root / "runs" / "*.json")] if any((root / "runs").glob("*.json")) else []
        evals = [str(root / "evals" / "*.json")] if any((root / "evals").glob("*.json")) else []
        # Built under a temporary name and renamed over the catalog: a reader holding the old file keeps
        # reading it, and no writer needs a lock on the file readers have open (DuckDB lets one process
        # write a database file, and not while others read it). Two refreshes at once each rename a
        # complete catalog of the same globs; a temporary catalog a crashed refresh left is removed once
        # it is an hour old (a younger one may be another writer's, busy).
        remove_leftovers(root, ".tmp-catalog*", older_than=3600)
        with replacing(self.catalog_path) as tmp:
            con = duckdb.connect(str(tmp))
            try:
                self._create_views(con, f"read_parquet({_sql_list(parts)}, union_by_name = true)",
                                   f"read_parquet({_sql_list(decisions)}, union_by_name = true)",
                                   _sql_list(runs) if runs else None, _sql_list(evals) if evals else None,
                                   f"read_parquet({_sql_list(ratings)}, union_by_name = true)")
            finally:
                con.close()
        return self.catalog_path

    def refresh_if_writable(self) -> None:
        """Bring the views up to date (new view definitions, a moved root) when we may write here."""
        if self.local and self.catalog_path.exists() and os.access(self.storage.path, os.W_OK):
            try:
                self.refresh()
            except duckdb.IOException:
                pass  # e.g. a full or read-only disk: the existing catalog still answers, if older

    def connect(self, read_only: bool = True) -> duckdb.DuckDBPyConnection:
        if not self.local:
            return self._connect_remote()
        if not self.catalog_path.exists():
            raise DistillError(
                f"no warehouse at {self.root} (no catalog.duckdb): run `distill run RECIPE` first, "
                "or pass --warehouse"
            )
        return duckdb.connect(str(self.catalog_path), read_only=read_only)

    def _connect_remote(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with the views over what the store holds now: the Parquet files as Arrow
        datasets on the store (DuckDB reads only the columns and row groups a query needs), the run
        records and eval results mirrored to a local folder (small JSON files)."""
        parts = self._parts() + self.storage.list("traces", "run_id=*/journey-*.parquet", recursive=True)
        runs = self._mirrored("runs")
        if not parts and not runs:
            raise DistillError(f"no warehouse at {self.root} (no runs, no parts): run `distill run RECIPE` "
                               "first, or pass --warehouse")
        decisions = self._decisions()
        con = duckdb.connect()
        con.register("_parts", self.storage.dataset(parts, SCHEMA) if parts else SCHEMA.empty_table())
        con.register("_decisions", self.storage.dataset(decisions, DECISIONS_SCHEMA) if decisions
                     else DECISIONS_SCHEMA.empty_table())
        ratings = self._side_files("ratings")
        con.register("_ratings", self.storage.dataset(ratings, RATINGS_SCHEMA) if ratings
                     else RATINGS_SCHEMA.empty_table())
        evals = self._mirrored("evals")
        self._create_views(con, "_parts", "_decisions", _sql_list([str(self._mirror / "runs" / "*.json")]) if runs else None,
                           _sql_list([str(self._mirror / "evals" / "*.json")]) if evals else None, "_ratings")
        return con

    def _mirrored(self, folder: str) -> list[str]:
        """Copy the store's `<folder>/*.json` to this process's local mirror (only files that changed);
        returns their names."""
        if self._mirror is None:
            self._mirror = Path(tempfile.mkdtemp(prefix="distill-mirror-"))
            atexit.register(shutil.rmtree, self._mirror, ignore_errors=True)
        local = self._mirror / folder
        local.mkdir(parents=True, exist_ok=True)
        names = []
        for rel in self.storage.list(folder, "*.json"):
            name = rel.rsplit("/", 1)[1]
            names.append(name)
            try:  # parsed first: a record replaced while it was read is read again (Storage.read_json)
                (local / name).write_text(json.dumps(self.storage.read_json(rel)), encoding="utf-8")
            except FileNotFoundError:  # removed since the listing
                names.pop()
        for stale in set(p.name for p in local.glob("*.json")) - set(names):
            (local / stale).unlink(missing_ok=True)
        return names

    def query(self, sql: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
        # On object storage a file listed at connect can be replaced while the query reads it (a redone shard,
        # rebuilt journeys, decisions made again): a read of that moment fails; list and read again, once.
        tries = 1 if self.local else 2
        for attempt in range(tries):
            con = self.connect(read_only=True)
            try:
                check_read_only(con, sql)
                cur = con.execute(sql, params or [])
                cols = [d[0] for d in cur.description] if cur.description else []
                return cols, cur.fetchall()
            except (duckdb.IOException, duckdb.InvalidInputException, pa.ArrowInvalid, OSError):
                if attempt == tries - 1:
                    raise
            finally:
                con.close()


def merge_runs(records: list[dict]) -> dict:
    """The run's record from the records of the workers that share it (each names itself in `worker`).

    Calls are every worker's (by call_id, in start order); the timings and counts are summed over them;
    a shard's filter report is the one written last (`at`); failures are the workers' own. The run is
    running while any worker runs, failed if one failed, incomplete if a worker is missing or left
    samples unmade, finished when every one of its `workers` finished.
    """
    records = sorted(records, key=lambda r: r.get("started_at") or "")
    run = {k: v for k, v in records[-1].items() if k != "worker"}
    calls: dict[str, dict] = {}
    for r in records:  # a worker's file also carries the others' calls as they were when it started: stale copies
        for c in r.get("calls") or []:
            key = c.get("call_id") or c.get("started_at") or ""
            if key not in calls or c.get("worker") == r.get("worker"):
                calls[key] = c
    run["calls"] = sorted(calls.values(), key=lambda c: c.get("started_at") or "")
    by_shard: dict[int, dict] = {}
    for r in records:
        for e in r.get("filters_by_shard") or []:
            if e["shard"] not in by_shard or (e.get("at") or "") >= (by_shard[e["shard"]].get("at") or ""):
                by_shard[e["shard"]] = e
    run["filters_by_shard"] = [by_shard[i] for i in sorted(by_shard)]
    totals: dict[str, float] = {}
    for c in run["calls"]:
        for k, v in (c.get("timings") or {}).items():
            totals[k] = totals.get(k, 0.0) + v
    run["timings"] = totals
    run["samples_generated"] = sum(c.get("generated") or 0 for c in run["calls"])
    run["samples_reused"] = sum(c.get("reused") or 0 for c in run["calls"])
    run["teacher_calls"] = sum(c.get("teacher_calls") or 0 for c in run["calls"])
    run["failures"] = [f for r in records for f in r.get("failures") or []][:100]
    run["failed_samples"] = sum(r.get("failed_samples") or 0 for r in records)
    run["errors"] = [r["error"] for r in records if r.get("error")]
    run["error"] = run["errors"][0] if run["errors"] else None
    workers = max(r.get("workers") or 1 for r in records)
    latest = {r.get("worker"): r for r in records}  # a worker's file holds its last call
    statuses = {w: latest[w].get("status") for w in latest}
    run["workers"], run["worker_status"] = workers, {str(w): s for w, s in sorted(statuses.items())}
    if "running" in statuses.values():
        run["status"] = "running"
    elif "failed" in statuses.values():
        run["status"] = "failed"
    elif len(statuses) < workers or "incomplete" in statuses.values():
        run["status"] = "incomplete"
    else:
        run["status"] = "finished"
    run["started_at"] = records[0].get("started_at")
    run["finished_at"] = None if run["status"] == "running" else max(r.get("finished_at") or "" for r in records) or None
    for r in records:
        for mode, stats in (r.get("journeys") or {}).items():
            run.setdefault("journeys", {})[mode] = stats
    decided = [r for r in records if r.get("global")]  # global dedup / decontam, by the last worker to finish
    if decided:
        run["global"] = max(decided, key=lambda r: r.get("finished_at") or "")["global"]
    return run


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
