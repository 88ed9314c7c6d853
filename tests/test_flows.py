"""The Prefect side of `distill`, for real: local Dask and Ray clusters of worker processes, a deployment
served on a cron schedule against a real Prefect server, and Prefect's retries of a flaky shard.

No mocks of Prefect or the model: the CLI runs as a subprocess with the embedded 135M model through
transformers; only the retry tests put a test-double generator in the per-process teacher cache.
Every process a test starts is stopped in a `finally` (its whole process group), every wait is bounded.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import DISTILL, ROOT
from distill.warehouse.store import Warehouse

pytestmark = pytest.mark.slow  # a real model, server, Prefect flow or CLI subprocess

FAST = ["--set", "backend=transformers", "--set", "max_tokens=16"]


# -- helpers ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nobody listens on it and a server could bind it again (as servers do, with SO_REUSEADDR:
    the connections we made leave TIME_WAIT entries that a plain bind would trip on)."""
    with socket.socket() as s:
        s.settimeout(2)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for(what: str, check, timeout: float, every: float = 1.0, proc: subprocess.Popen | None = None):
    """Poll `check()` until it returns something truthy; fail after `timeout` s (or if `proc` died)."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # not up yet
            last_error = e
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode} while waiting; {log_tail(proc)}")
        time.sleep(every)
    pytest.fail(f"{what}: not after {timeout:.0f} s (last error: {last_error!r}); "
                f"{log_tail(proc) if proc is not None else ''}")


def log_tail(proc: subprocess.Popen, chars: int = 3000) -> str:
    path = getattr(proc, "log_path", None)
    return f"log tail:\n{Path(path).read_text(errors='replace')[-chars:]}" if path and Path(path).exists() else ""


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A background process in its own session, so stopping it stops what it spawned too."""
    f = open(log, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = str(log)
    proc.log_file = f
    return proc


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group we created for it, then SIGKILL; by id, nothing broader."""
    pgid = proc.pid  # start_new_session: the group id is the leader's pid
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; make sure nothing it spawned outlives it
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    proc.log_file.close()


def processes_marked(mark: str) -> list[tuple[int, str]]:
    """Live processes whose environment carries DISTILL_TEST_MARK=mark: everything a command started,
    however deep (Dask nannies and workers, temporary Prefect servers, verification pools)."""
    needle = f"DISTILL_TEST_MARK={mark}".encode()
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if needle in (p / "environ").read_bytes().split(b"\0"):
                found.append((int(p.name), (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]))
        except OSError:
            continue
    return found


def kill_marked(mark: str) -> None:
    for pid, _ in processes_marked(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- 1. Dask and Ray: a local cluster of worker processes, started and stopped by the task runner ------
def run_on_local_cluster(tmp_path: Path, runner: str) -> tuple[Path, str, str]:
    """`distill run` of the default recipe, 4 problems x 2 samples in 2 shards of 2, on `runner`'s local
    cluster. Checks that every shard ran exactly once and that nothing the run started (workers, what
    they started: verification pools, temporary Prefect servers) outlives it; returns (warehouse,
    run id, the run's log)."""
    wh_dir = tmp_path / "wh"
    mark = uuid.uuid4().hex
    try:
        # output to files, not pipes: a process left behind would hold a pipe open and hang the test
        out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.run(
                [*DISTILL, "run", "recipes/default.yaml", "--limit", "4", *FAST, "--set", "n=2",
                 "--set", f"task_runner={runner}", "--set", "parallel_shards=2", "--set", "shard_size=2",
                 "--warehouse", str(wh_dir)],
                cwd=ROOT, stdout=fo, stderr=fe, timeout=400, env={**os.environ, "DISTILL_TEST_MARK": mark})
        stderr = err.read_text(errors="replace")
        # Prefect's log lines are in the run's log file (on the terminal with --verbose)
        logs = "".join(f.read_text(errors="replace") for f in (wh_dir / "logs").glob("*.log"))
        assert proc.returncode == 0, stderr[-4000:] + logs[-4000:]
        assert "tokens/s" in out.read_text()

        wh = Warehouse(wh_dir)
        (run_id, status), = wh.query("select run_id, status from runs")[1]
        assert status == "finished"
        run = json.loads((wh_dir / "runs" / f"{run_id}.json").read_text())
        assert run["recipe"]["task_runner"] == runner and run["shards"] == 2 and run["shards_resumed"] == 0
        # 4 problems x 2 samples, each exactly once, across both shards' parts
        assert wh.query("select count(*), count(distinct trace_id), count(distinct problem_id) from traces")[1] \
            == [(8, 8, 4)]
        assert wh.query("select problem_id, count(*) from traces group by 1 having count(*) <> 2")[1] == []
        for shard in (0, 1):
            assert wh.part_exists(run_id, shard)
            assert wh.part_missing(run_id, shard) == 0
        assert sorted(p.name for p in (wh_dir / "traces" / f"run_id={run_id}").iterdir()) \
            == ["part-00000.parquet", "part-00001.parquet"]

        # When `distill run` returns, nothing it started may still run.
        left = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (left := processes_marked(mark)):
            time.sleep(1)
        assert not left, f"processes left behind by `distill run` with task_runner={runner}: {left}"
        return wh_dir, run_id, logs
    finally:
        kill_marked(mark)


def test_dask_local_cluster_runs_every_shard_once_and_leaves_no_process(tmp_path):
    _, _, logs = run_on_local_cluster(tmp_path, "dask")
    assert "Creating a new Dask cluster" in logs  # shards went to Dask, not to threads


def test_ray_local_cluster_runs_every_shard_once_and_leaves_no_process(tmp_path):
    _, _, logs = run_on_local_cluster(tmp_path, "ray")
    assert "Creating a local Ray instance" in logs  # shards went to Ray, not to threads


# -- 2. Schedules: a served deployment on a real Prefect server ---------------------------------
@pytest.fixture
def prefect_server(tmp_path):
    """`prefect server start` on a free port with its own PREFECT_HOME; yields (api_url, env)."""
    port = free_port()
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_UI_ENABLED="false")
    server = start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   env, tmp_path / "server.log")
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_for("prefect server health", lambda: httpx.get(f"{api}/health", timeout=5).json() is True,
                 timeout=180, proc=server)
        yield api, {**env, "PREFECT_API_URL": api}
    finally:
        stop(server)
        wait_for(f"port {port} free after the server stopped", lambda: port_is_free(port), timeout=30)


def add_problems(path: Path, pairs: list[tuple[int, int]]) -> None:
    with open(path, "a") as f:
        for a, b in pairs:
            f.write(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n")


def test_served_deployment_on_cron_runs_on_trigger_and_picks_up_new_problems(tmp_path, prefect_server):
    api, env = prefect_server
    wh_dir = tmp_path / "wh"
    data = tmp_path / "problems.jsonl"
    add_problems(data, [(2, 3), (4, 1)])
    cron = "0 0 1 1 *"
    # no --limit: it would freeze the problem count, and new problems would never be picked up
    serve = start([*DISTILL, "serve", "recipes/default.yaml", "--cron", cron, "--name", "t", *FAST,
                   "--set", "n=2", "--set", f"dataset={data}", "--warehouse", str(wh_dir)],
                  {**env, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}, tmp_path / "serve.log")
    http = httpx.Client(base_url=api, timeout=30)
    try:
        deployment = wait_for(
            "deployment generate/t registered",
            lambda: next(iter(http.post("/deployments/filter",
                                        json={"deployments": {"name": {"any_": ["t"]}}}).json()), None),
            timeout=180, every=2, proc=serve)
        flow = http.get(f"/flows/{deployment['flow_id']}").json()
        assert flow["name"] == "generate"
        # the schedule is registered, active, with the cron given
        crons = [s["schedule"].get("cron") for s in deployment["schedules"] if s.get("active", True)]
        assert crons == [cron], deployment["schedules"]
        run_id = deployment["parameters"]["run_id"]

        def trigger_and_wait() -> dict:
            r = http.post(f"/deployments/{deployment['id']}/create_flow_run", json={})
            assert r.status_code < 300, f"create_flow_run: HTTP {r.status_code} {r.text[:2000]}\n{log_tail(serve)}"
            fr = r.json()
            state = wait_for(
                f"flow run {fr['id']} final",
                lambda: (s := http.get(f"/flow_runs/{fr['id']}").json()["state"]) and s["type"] in (
                    "COMPLETED", "FAILED", "CRASHED", "CANCELLED") and s,
                timeout=300, every=2, proc=serve)
            assert state["type"] == "COMPLETED", f"{state['type']}: {state.get('message')}\n{log_tail(serve)}"
            record = json.loads((wh_dir / "runs" / f"{run_id}.json").read_text())
            assert record["status"] == "finished", record
            return record

        first = trigger_and_wait()
        assert first["problems"] == 2
        wh = Warehouse(wh_dir)
        old_q = "select trace_id, completion, created_at from traces where run_id = ? order by trace_id"
        old = wh.query(old_q, [run_id])[1]
        assert len(old) == 2 * 2
        assert wh.query("select count(distinct problem_id) from traces")[1] == [(2,)]

        # the dataset grows; the next run of the same deployment generates only for the new problems
        add_problems(data, [(5, 2), (6, 3)])
        second = trigger_and_wait()
        assert second["problems"] == 4 and second["run_id"] == run_id
        cols, rows = wh.query("select problem_id, count(*), count(distinct trace_id) from traces "
                              "where run_id = ? group by 1", [run_id])
        assert len(rows) == 4 and all(r[1:] == (2, 2) for r in rows), rows
        assert wh.query("select count(*) from traces")[1] == [(8,)]
        # the old samples are the same rows: not regenerated, not duplicated
        old_ids = [r[0] for r in old]
        now = wh.query(f"select trace_id, completion, created_at from traces where trace_id in "
                       f"({', '.join('?' * len(old_ids))}) order by trace_id", old_ids)[1]
        assert now == old
        # two flow runs of the deployment, both completed
        runs = http.post("/flow_runs/filter",
                         json={"deployments": {"id": {"any_": [deployment["id"]]}}}).json()
        assert sorted(r["state"]["type"] for r in runs) == ["COMPLETED", "COMPLETED"]
    finally:
        http.close()
        stop(serve)
    assert serve.poll() is not None


# -- 3. Prefect retries of a shard (in-process, test-double generator) --------------------------
@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


class ScriptedGenerator:
    """A teacher whose calls go to script: an exception instance is raised, anything else answers."""

    def __init__(self, script: list):
        self.script = list(script)
        self.calls = 0
        self.lock = threading.Lock()

    def generate(self, conversations, sampling, indices=None, on_sample=None):
        from distill.generators.base import Sample

        with self.lock:
            step = self.script[min(self.calls, len(self.script) - 1)]
            self.calls += 1
        if isinstance(step, BaseException):
            raise step
        return [[Sample("<think>2+3=5</think>\\boxed{5}", "stop", 10, 8, 0.01)] * sampling.n for _ in conversations]


@pytest.fixture
def teacher_double():
    """Put a ScriptedGenerator in the per-process teacher cache for a recipe; removed after."""
    from distill import generators as g

    keys = []

    def install(recipe, script):
        key = g.teacher_key(recipe.backend_name(), recipe.teacher_settings())
        assert key not in g._TEACHERS, "a real teacher is cached under this key already"
        gen = ScriptedGenerator(script)
        g._TEACHERS[key] = (gen, threading.Lock())
        keys.append(key)
        return gen

    yield install
    for key in keys:
        g._TEACHERS.pop(key, None)


def recipe_for(tmp_path, **overrides):
    from distill.flows.recipe import load_recipe

    return load_recipe(ROOT / "recipes" / "default.yaml",
                       {"backend": "transformers", "limit": 2, "n": 2, "warehouse": str(tmp_path / "wh"), **overrides})


def test_a_shard_that_fails_twice_is_retried_by_prefect_and_succeeds(tmp_path, prefect_harness, teacher_double):
    from distill.flows.generate import run_generate, run_id_for

    recipe = recipe_for(tmp_path)
    gen = teacher_double(recipe, [RuntimeError("flaky 1"), RuntimeError("flaky 2"), "ok"])
    run_id = run_id_for(recipe)
    run = run_generate(recipe, run_id, ROOT / "recipes")
    assert gen.calls == 3  # two failures, two retries (shard_task retries=2), the last one succeeds
    assert run["status"] == "finished" and run["error"] is None
    wh = Warehouse(recipe.execution.warehouse)
    assert wh.read_run(run_id)["status"] == "finished"
    assert wh.query("select count(*), count(distinct trace_id) from traces where run_id = ?", [run_id])[1] == [(4, 4)]
    assert wh.query("select count(*) from traces where completion <> '<think>2+3=5</think>\\boxed{5}'")[1] == [(0,)]


def test_a_backend_error_is_not_retried_and_finished_shards_are_kept(tmp_path, prefect_harness, teacher_double):
    from distill.flows.generate import run_generate, run_id_for
    from distill.errors import BackendError

    recipe = recipe_for(tmp_path, shard_size=1, parallel_shards=1)  # shard 0, then shard 1, in one thread
    gen = teacher_double(recipe, ["ok", BackendError("no such model"), "ok"])
    run_id = run_id_for(recipe)
    started = time.monotonic()
    with pytest.raises(BackendError, match="no such model"):
        run_generate(recipe, run_id, ROOT / "recipes")
    assert gen.calls == 2  # shard 0 once, shard 1 once: no retry of a BackendError
    assert time.monotonic() - started < 60  # and no waiting for retry delays either
    wh = Warehouse(recipe.execution.warehouse)
    record = wh.read_run(run_id)
    assert record["status"] == "failed" and record["error"].startswith("BackendError") and record["finished_at"]
    assert wh.part_exists(run_id, 0) and not wh.part_exists(run_id, 1)
    assert wh.query("select count(*) from traces where run_id = ?", [run_id])[1] == [(2,)]
    assert wh.query("select status from runs where run_id = ?", [run_id])[1] == [("failed",)]
