import subprocess
import sys
import textwrap

import duckdb
import pytest

from tests.conftest import ROOT
from distill.warehouse.store import Warehouse
from distill.errors import DistillError


def traces_for(make_trace, run_id, n, kept_every=2):
    return [make_trace(trace_id=f"{run_id}-{i}", run_id=run_id, problem_id=f"p{i // 2}", sample_index=i % 2,
                       correct=i % kept_every == 0, kept=i % kept_every == 0,
                       rejected_by=None if i % kept_every == 0 else "wrong_answer") for i in range(n)]


def test_empty_warehouse_has_queryable_views(tmp_path):
    wh = Warehouse(tmp_path)
    wh.refresh()
    assert wh.query("select count(*) from traces")[1] == [(0,)]
    assert wh.query("select count(*) from funnel")[1] == [(0,)]
    assert wh.query("select count(*) from runs")[1] == [(0,)]
    # parts can be stored before the first record (and on a store a reader lists them then): the record's
    # fields are columns already, with no rows
    assert wh.query("select status, samples_generated, teacher from runs")[1] == []


def test_parts_before_any_record_leave_runs_queryable_and_empty(tmp_path, make_trace):
    wh = Warehouse(tmp_path)
    wh.write_part("r1", 0, traces_for(make_trace, "r1", 4))
    wh.refresh()
    assert wh.query("select count(*) from traces")[1] == [(4,)]
    assert wh.query("select run_id, status, samples_generated from runs")[1] == []


def test_parts_runs_and_views(tmp_path, make_trace):
    wh = Warehouse(tmp_path)
    wh.write_part("r1", 0, traces_for(make_trace, "r1", 4))
    wh.write_part("r1", 1, traces_for(make_trace, "r1b", 2))
    wh.write_run({"run_id": "r1", "status": "finished", "timings": {"wall": 1.0}})
    wh.refresh()
    assert wh.query("select count(*) from traces")[1] == [(6,)]
    assert wh.query("select count(*) from accepted")[1] == [(3,)]
    cols, rows = wh.query("select problems, samples, correct, kept from funnel where run_id = 'r1'")
    assert rows == [(2, 4, 2, 2)]
    assert wh.query("select status from runs")[1] == [("finished",)]
    assert wh.query("select scores['x'] is null, prompt[1].role from traces limit 1")[1] == [(True, "user")]


def test_part_exists_only_after_the_write(tmp_path, make_trace):
    wh = Warehouse(tmp_path)
    assert not wh.part_exists("r", 0)
    wh.write_part("r", 0, traces_for(make_trace, "r", 2))
    assert wh.part_exists("r", 0)


def test_crash_before_rename_leaves_no_part(tmp_path):
    # A real process dies between writing the temporary file and renaming it.
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from distill.warehouse.schema import Trace
        from distill.warehouse.store import Warehouse
        from distill.errors import DistillError
        t = Trace(trace_id="t", run_id="r", problem_id="p", sample_index=0, source="s", domain="math",
                  prompt=[], reference="1", teacher="m", backend="b", sampling="{{}}", completion="c",
                  reasoning="", answer="c", finish_reason="stop")
        os.replace = lambda *a: os._exit(9)
        Warehouse({str(tmp_path)!r}).write_part("r", 0, [t])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    wh = Warehouse(tmp_path)
    assert not wh.part_exists("r", 0)
    assert list((tmp_path / "traces" / "run_id=r").glob(".tmp-*"))  # the half-done file is out of sight
    wh.refresh()
    assert wh.query("select count(*) from traces")[1] == [(0,)]


def test_catalog_is_opened_read_only_for_queries(tmp_path, make_trace):
    wh = Warehouse(tmp_path)
    wh.write_part("r", 0, traces_for(make_trace, "r", 2))
    wh.refresh()
    for stmt in ("create table x as select 1", "delete from traces", "drop view traces",
                 "attach 'other.db'", "select 1; delete from traces"):
        with pytest.raises(DistillError, match="read-only here: .* statements are not allowed"):
            wh.query(stmt)
    # and underneath the check, the connection itself cannot write
    with pytest.raises(duckdb.Error):
        wh.connect(read_only=True).execute("create table x as select 1")
    assert wh.query("select count(*) from traces")[1] == [(2,)]


def test_parts_written_after_a_refresh_are_in_the_view(tmp_path, make_trace):
    wh = Warehouse(tmp_path)
    wh.write_part("r", 0, traces_for(make_trace, "r", 2))
    wh.refresh()
    wh.write_part("r", 1, traces_for(make_trace, "s", 2))
    assert wh.query("select count(*) from traces")[1] == [(4,)]


def test_query_without_a_warehouse_says_how_to_make_one(tmp_path):
    with pytest.raises(DistillError, match="no warehouse at .*distill run RECIPE"):
        Warehouse(tmp_path / "none").query("select 1")


def test_filter_funnel_counts_in_dropped_kept_per_step(tmp_path, make_trace):
    from distill.filters import apply_filters, make_filter
    from distill.filters.selection import select_per_problem

    ts = [make_trace(trace_id=str(i), run_id="r", sample_index=i, finish_reason=f, correct=c)
          for i, (f, c) in enumerate([("stop", True), ("length", True), ("stop", False), ("stop", None), ("stop", True)])]
    apply_filters(ts, [make_filter("truncation"), make_filter("rejection")])
    select_per_problem(ts, keep_per_problem=1)
    wh = Warehouse(tmp_path)
    wh.write_part("r", 0, ts)
    wh.refresh()
    _, rows = wh.query('select step, stage, "in", dropped, kept, dropped_by_reason from filter_funnel order by step')
    assert rows == [(1, "truncation", 5, 1, 4, {"truncated": 1}),
                    (2, "rejection", 4, 2, 2, {"unverifiable": 1, "wrong_answer": 1}),
                    (3, "selection", 2, 1, 1, {"over_quota": 1})]


def test_problems_view_has_one_row_per_problem(tmp_path, make_trace):
    wh = Warehouse(tmp_path)
    wh.write_part("r", 0, traces_for(make_trace, "r", 4))
    wh.refresh()
    assert wh.query("select problem_id, question, samples from problems order by 1")[1] == \
        [("p0", "What is 1 + 1?", 2), ("p1", "What is 1 + 1?", 2)]


def test_parts_from_an_older_schema_stay_readable(tmp_path, make_trace):
    # A part written before a column existed (here: without rejected_stage) reads as NULL there.
    import pyarrow.parquet as pq

    from distill.warehouse.schema import SCHEMA_VERSION, to_table

    wh = Warehouse(tmp_path)
    old = to_table(traces_for(make_trace, "old", 2)).drop_columns(["rejected_stage"])
    wh.part_path("old", 0).parent.mkdir(parents=True)
    pq.write_table(old, wh.part_path("old", 0))
    wh.write_part("new", 0, traces_for(make_trace, "new", 2))
    wh.refresh()
    assert wh.query("select run_id, count(*), count(rejected_stage), min(schema_version) from traces "
                    "group by 1 order by 1")[1] == [("new", 2, 0, SCHEMA_VERSION), ("old", 2, 0, SCHEMA_VERSION)]


def test_a_warehouse_made_before_a_column_was_added_opens(tmp_path, make_trace):
    # Its _schema.parquet and its parts both predate rejected_stage: the refresh rewrites _schema.parquet,
    # the views bind, and the old rows read NULL there.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distill.warehouse.schema import SCHEMA, to_table

    wh = Warehouse(tmp_path)
    old_schema = SCHEMA.remove(SCHEMA.get_field_index("rejected_stage"))
    (tmp_path / "traces").mkdir()
    pq.write_table(pa.Table.from_pylist([], schema=old_schema), tmp_path / "traces" / "_schema.parquet")
    wh.part_path("old", 0).parent.mkdir(parents=True)
    pq.write_table(to_table(traces_for(make_trace, "old", 4)).drop_columns(["rejected_stage"]), wh.part_path("old", 0))
    wh.refresh()
    assert pq.read_schema(tmp_path / "traces" / "_schema.parquet").equals(SCHEMA, check_metadata=False)
    assert wh.query("select count(*), count(rejected_stage), count(rejected_by) from traces")[1] == [(4, 0, 2)]
    assert wh.query("select samples, kept from funnel")[1] == [(4, 2)]
    assert wh.query("select count(*) from filter_funnel")[1] == [(0,)]  # no scores in these rows: no steps
    assert wh.query("select count(*) from problems")[1] == [(2,)]
    # and a part of today's schema sits next to the old one
    wh.write_part("new", 0, traces_for(make_trace, "new", 2))
    wh.refresh()
    assert wh.query("select run_id, count(*), count(rejected_stage) from traces group by 1 order by 1")[1] == \
        [("new", 2, 0), ("old", 4, 0)]
    assert sorted(p.name for p in (tmp_path / "traces").iterdir()) == ["_schema.parquet", "run_id=new", "run_id=old"]


def test_a_refresh_leaves_another_writers_temporary_catalog_alone(tmp_path, make_trace):
    # another process (or machine sharing the folder) is building its catalog: its file is young and stays;
    # one a crashed refresh left an hour ago goes
    import os
    import time

    wh = Warehouse(tmp_path)
    wh.write_part("r", 0, traces_for(make_trace, "r", 2))
    busy = tmp_path / ".tmp-catalog.duckdb-0123456789ab.partial"
    stale = tmp_path / ".tmp-catalog.duckdb-ba9876543210.partial"
    busy.write_bytes(b"x")
    stale.write_bytes(b"x")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    wh.refresh()
    assert busy.exists() and not stale.exists()
    assert wh.query("select count(*) from traces")[1] == [(2,)]


def test_any_fsspec_url_is_a_warehouse_root(make_trace):
    # memory:// stands for the fsspec schemes pyarrow has no client of its own for (hf://, az://, …)
    wh = Warehouse("memory://distill-test/wh")
    assert not wh.local and wh.root == "memory://distill-test/wh"
    wh.write_part("r", 0, traces_for(make_trace, "r", 4), expected=4)
    wh.write_checkpoint("r", 1, traces_for(make_trace, "r", 2))
    wh.write_run({"run_id": "r", "status": "finished"})
    assert wh.part_missing("r", 0) == 0 and wh.checkpointed_shards("r") == {1}
    assert wh.query("select samples, kept from funnel")[1] == [(4, 2)]
    assert wh.query("select status from runs")[1] == [("finished",)]
    assert len(wh.find_samples(["r-0", "r-3"])) == 2


def test_a_record_that_is_not_json_is_one_clear_error_and_leaves_the_file(tmp_path):
    wh = Warehouse(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "r.json").write_text('{"run_id": "r", "sta')
    with pytest.raises(DistillError, match=r"^warehouse .*: runs/r.json is not valid JSON$"):
        wh.read_run("r")
    assert (tmp_path / "runs" / "r.json").read_text() == '{"run_id": "r", "sta'  # never rewritten or removed
