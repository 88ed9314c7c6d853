"""Kill -9 at several moments, rerun: every sample exactly once, as if never interrupted.

`distill run` runs as a real subprocess (its own process group, so the kill takes its Prefect
server and worker processes too, as a preempted machine would) on the embedded model.
"""
import os
import signal
import subprocess
import sys
import time

from tests.conftest import DISTILL, ROOT
from warehouse.store import Warehouse

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
    # 2. in the middle: one shard stored, the others not
    p = start(crashed)
    kill_when(p, lambda: len(parts(crashed)) >= 1 if (crashed / "traces").exists() else False)
    stored = len(parts(crashed))
    assert 1 <= stored < 4
    # 3. as soon as a part or the catalog is being written (a temporary file exists), or else at the next part
    p = start(crashed)
    kill_when(p, lambda: bool(list(crashed.rglob(".tmp-*"))) or len(parts(crashed)) > stored)

    out = finish(crashed)
    got = trace_ids(crashed)
    assert sorted(got) == sorted(expected)  # same samples, each exactly once
    assert "already done" in out.stdout  # the rerun resumed instead of starting over
    (run_id, status), = Warehouse(crashed).query("select run_id, status from runs")[1]
    assert status == "finished" and len(parts(crashed)) == 4
