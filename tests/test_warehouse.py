import subprocess
import sys
import textwrap

import duckdb
import pytest

from tests.conftest import ROOT
from warehouse.store import ReadOnlyError, Warehouse


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
        from warehouse.schema import Trace
        from warehouse.store import ReadOnlyError, Warehouse
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
        with pytest.raises(ReadOnlyError, match="read-only here: .* statements are not allowed"):
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
    with pytest.raises(FileNotFoundError, match="no warehouse at .*distill run RECIPE"):
        Warehouse(tmp_path / "none").query("select 1")
