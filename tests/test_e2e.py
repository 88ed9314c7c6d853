"""The default recipe end to end, as a user runs it: the real model, real engines, real Prefect."""
import json

from tests.conftest import run_cli
from distill.warehouse.store import Warehouse
import pytest

pytestmark = pytest.mark.slow  # a real model, server, Prefect flow or CLI subprocess


def check_warehouse(wh: Warehouse, problems: int, n: int) -> str:
    (run_id, status), = wh.query("select run_id, status from runs")[1]
    assert status == "finished"
    cols, rows = wh.query("select problems, samples, correct, kept from funnel where run_id = ?", [run_id])
    problems_seen, samples, correct, kept = rows[0]
    assert (problems_seen, samples) == (problems, problems * n)
    # kept only if verified correct and complete; every rejection has a reason and the step that gave it
    assert wh.query("select count(*) from traces where kept and not (coalesce(correct, false) "
                    "and finish_reason <> 'length')")[1] == [(0,)]
    assert wh.query("select count(*) from traces where not kept and (rejected_by is null "
                    "or rejected_stage is null)")[1] == [(0,)]
    # every filter of the default recipe scored every sample
    assert wh.query("select count(*) from traces where cardinality(scores) < 6")[1] == [(0,)]
    assert wh.query("select count(distinct trace_id) from traces")[1] == [(samples,)]
    assert wh.query("select count(*) from traces where completion_tokens > 0 and prompt_tokens > 0 "
                    "and scores['rejection'] is not distinct from correct::int")[1] == [(samples,)]
    return run_id


def test_default_recipe_on_vllm(tmp_path):
    wh_dir = tmp_path / "wh"
    # as `make demo` runs it: no Prefect server named, so the CLI starts its temporary one
    proc = run_cli("run", "recipes/default.yaml", "--limit", "6", "--warehouse", str(wh_dir),
                   env={"PREFECT_API_URL": None})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verified correct" in proc.stdout and "tokens/s" in proc.stdout
    wh = Warehouse(wh_dir)
    run_id = check_warehouse(wh, problems=6, n=4)
    assert json.loads((wh_dir / "runs" / f"{run_id}.json").read_text())["backend"] == "vllm"
    # the model solves some single-digit sums with the few-shot prompt: rejection sampling keeps something
    assert wh.query("select count(*) from accepted")[1][0][0] > 0

    sql = run_cli("sql", "select rejected_by, count(*) as n from traces group by 1 order by 1",
                  "--warehouse", str(wh_dir), timeout=60)
    assert sql.returncode == 0 and "rejected_by" in sql.stdout


def test_transformers_backend_resumes_only_missing_shards(tmp_path):
    wh_dir = tmp_path / "wh"
    args = ["run", "recipes/default.yaml", "--limit", "4", "--set", "backend=transformers",
            "--set", "shard_size=2", "--warehouse", str(wh_dir)]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    wh = Warehouse(wh_dir)
    run_id = check_warehouse(wh, problems=4, n=4)
    ids_before = {r[0] for r in wh.query("select trace_id from traces")[1]}

    # lose one shard (as if the process died before writing it), rerun: only it is generated again
    (wh_dir / "traces" / f"run_id={run_id}" / "part-00001.parquet").unlink()
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "1 of 2 shards already done" in second.stdout
    assert {r[0] for r in wh.query("select trace_id from traces")[1]} == ids_before
    check_warehouse(wh, problems=4, n=4)
