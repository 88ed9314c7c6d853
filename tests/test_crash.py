"""Kill -9 at several moments, rerun: every sample exactly once, as if never interrupted.

`distill run` runs as a real subprocess (its own process group, so the kill takes its Prefect
server and worker processes too, as a preempted machine would) on the embedded model.
"""
import os
import signal
import subprocess
import time

from tests.conftest import DISTILL, ROOT
from distill.warehouse.store import Warehouse
import pytest

pytestmark = pytest.mark.slow  # a real model, server, Prefect flow or CLI subprocess

ARGS = ["run", "recipes/default.yaml", "--limit", "4", "--set", "backend=transformers", "--set", "shard_size=1",
        "--set", "n=2", "--set", "parallel_shards=1", "--set", "max_tokens=16"]


def start(wh_dir):
    return subprocess.Popen([*DISTILL, *ARGS, "--warehouse", str(wh_dir)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def kill_when(proc, ready, timeout=300):
    """SIGKILL the whole process group as soon as `ready()` is true."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def parts(wh_dir):
    return sorted((wh_dir / "traces").glob("run_id=*/part-*.parquet"))


def finish(wh_dir):
    proc = subprocess.run([*DISTILL, *ARGS, "--warehouse", str(wh_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def trace_ids(wh_dir):
    wh = Warehouse(wh_dir)
    rows = wh.query("select trace_id from traces")[1]
    return [r[0] for r in rows]


def checkpoints(wh_dir):
    return sorted((wh_dir / "traces").glob("run_id=*/ckpt-*.parquet")) if (wh_dir / "traces").exists() else []


def test_sigkill_at_several_points_then_rerun_equals_an_uninterrupted_run(tmp_path):
    clean = tmp_path / "clean"
    finish(clean)
    expected = trace_ids(clean)
    assert len(expected) == len(set(expected)) == 4 * 2

    crashed = tmp_path / "crashed"
    # 1. before any shard is stored: the run record exists, generation has started
    p = start(crashed)
    kill_when(p, lambda: any((crashed / "runs").glob("*.json")) if (crashed / "runs").exists() else False)
    assert not parts(crashed)
    # 2. in the middle of a shard: the teacher's samples are in a checkpoint, the shard's part is not written
    p = start(crashed)
    kill_when(p, lambda: bool(checkpoints(crashed)))
    # 3. between shards: one shard stored, the others not
    p = start(crashed)
    kill_when(p, lambda: len(parts(crashed)) >= 1 if (crashed / "traces").exists() else False)
    stored = len(parts(crashed))
    assert 1 <= stored < 4
    # 4. during the catalog's refresh (it is built under a temporary name, then renamed), or else while a
    #    part is being written, or else at the next part
    p = start(crashed)
    kill_when(p, lambda: bool(list(crashed.glob(".tmp-catalog-*")) or list(crashed.rglob(".tmp-*")))
              or len(parts(crashed)) > stored)

    out = finish(crashed)
    got = trace_ids(crashed)
    assert sorted(got) == sorted(expected)  # same samples, each exactly once
    assert "already done" in out.stdout  # the rerun resumed instead of starting over
    (run_id, status), = Warehouse(crashed).query("select run_id, status from runs")[1]
    assert status == "finished" and len(parts(crashed)) == 4 and not checkpoints(crashed)


def test_sigkill_mid_shard_on_vllm_loses_only_what_was_in_flight(tmp_path):
    """vLLM hands each sample over as it finishes; with checkpoint_seconds 0 each is on disk at once. Kill -9
    after the first ones: the rerun takes those from the checkpoints and asks the engine only for the rest."""
    import pyarrow.parquet as pq

    from distill.flows.generate import problems_for, sample_ids
    from distill.flows.recipe import load_recipe

    wh_dir = tmp_path / "wh"
    args = ["run", "recipes/default.yaml", "--limit", "6", "--set", "backend=vllm", "--set", "checkpoint_seconds=0",
            "--set", "max_tokens=96", "--warehouse", str(wh_dir)]
    p = subprocess.Popen([*DISTILL, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    kill_when(p, lambda: bool(checkpoints(wh_dir)), timeout=600)
    assert not parts(wh_dir)  # one shard of 6 problems: killed inside it
    saved = {t for f in checkpoints(wh_dir) for t in pq.read_table(f, columns=["trace_id"]).column(0).to_pylist()}
    assert 0 < len(saved) < 6 * 4

    rerun = subprocess.run([*DISTILL, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    wh = Warehouse(wh_dir)
    (run_id, record), = [(r, wh.read_run(r)) for (r,) in wh.query("select run_id from runs")[1]]
    call = record["calls"][-1]
    # the rerun recovered every checkpointed sample and generated exactly the others
    assert (call["recovered"], call["generated"]) == (len(saved), 6 * 4 - len(saved))
    recipe = load_recipe(ROOT / "recipes" / "default.yaml", {"limit": 6, "max_tokens": 96})
    problems = problems_for(recipe, ROOT / "recipes")
    assert sorted(trace_ids(wh_dir)) == sorted(t for p_ in problems for t in sample_ids(recipe, p_))
    assert not checkpoints(wh_dir)
