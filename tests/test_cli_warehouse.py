"""`distill sql`, `distill runs`, `distill show` on a real warehouse written by the store."""
import json

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli
from distill.warehouse.store import Warehouse

pytestmark = pytest.mark.slow  # a real model, server, Prefect flow or CLI subprocess


@pytest.fixture
def wh_dir(tmp_path, make_trace):
    wh = Warehouse(tmp_path / "wh")
    traces = [make_trace(trace_id=f"t{i}", run_id="demo-1", problem_id=f"p{i // 2}", sample_index=i % 2,
                         correct=i % 2 == 0, kept=i % 2 == 0, rejected_by=None if i % 2 == 0 else "wrong_answer")
              for i in range(4)]
    wh.write_part("demo-1", 0, traces)
    wh.write_run({"run_id": "demo-1", "status": "finished", "started_at": "2026-11-23T00:00:00+00:00",
                  "finished_at": "2026-11-23T00:01:00+00:00", "teacher": "m", "backend": "vllm",
                  "command": "distill run r.yaml", "versions": {"duckdb": "2.0.0"}, "git_sha": "abc",
                  "recipe": {"name": "demo", "n": 2}, "timings": {"wall": 60.0, "generate": 2.0},
                  "shards": 1, "shards_resumed": 0})
    wh.refresh()
    return tmp_path / "wh"


def test_sql_csv_to_stdout(wh_dir):
    proc = run_cli("sql", "select rejected_by, count(*) as n from traces group by 1 order by 1 nulls first",
                   "--warehouse", str(wh_dir), "--format", "csv", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["rejected_by,n", ",2", "wrong_answer,2"]


def test_sql_json_to_stdout(wh_dir):
    proc = run_cli("sql", "select problem_id, pass_rate from pass_rates order by 1", "--warehouse", str(wh_dir),
                   "--format", "json", timeout=60)
    assert json.loads(proc.stdout) == [{"problem_id": "p0", "pass_rate": 0.5}, {"problem_id": "p1", "pass_rate": 0.5}]


def test_sql_out_parquet_takes_the_format_from_the_suffix(wh_dir, tmp_path):
    proc = run_cli("sql", "select trace_id, completion from accepted", "--warehouse", str(wh_dir),
                   "--out", str(tmp_path / "a.parquet"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(tmp_path / "a.parquet").num_rows == 2


def test_sql_write_statement_fails_clearly_and_changes_nothing(wh_dir):
    proc = run_cli("sql", "delete from traces", "--warehouse", str(wh_dir), timeout=60)
    assert proc.returncode == 2 and "read-only" in proc.stderr and "DELETE" in proc.stderr
    assert Warehouse(wh_dir).query("select count(*) from traces")[1] == [(4,)]


def test_sql_bad_query_is_one_line(wh_dir):
    proc = run_cli("sql", "select nope from traces", "--warehouse", str(wh_dir), timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "nope" in proc.stderr


def test_runs_and_show(wh_dir):
    runs = run_cli("runs", "--warehouse", str(wh_dir), timeout=60)
    assert runs.returncode == 0 and "demo-1" in runs.stdout and "finished" in runs.stdout
    show = run_cli("show", "demo-1", "--warehouse", str(wh_dir), timeout=60)
    assert show.returncode == 0, show.stderr
    for text in ("distill run r.yaml", "git_sha: abc", "duckdb 2.0.0", "verified correct", "wrong_answer"):
        assert text in show.stdout


def test_show_unknown_run_lists_the_known(wh_dir):
    proc = run_cli("show", "nope", "--warehouse", str(wh_dir), timeout=60)
    assert proc.returncode == 2 and "no run 'nope'" in proc.stderr and "demo-1" in proc.stderr
