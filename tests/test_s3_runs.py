"""`distill` against a warehouse on object storage, as users run it: real `distill run` processes (several at
once, on one S3 warehouse), a real S3 API (moto's server), the embedded model. Every command that reads the
warehouse works on the URL; workers share a run without a lock; a kill -9 or a store that goes away loses
nothing written."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from distill.warehouse.store import Warehouse
from tests.conftest import DISTILL, ROOT, free_port, run_cli

pytestmark = pytest.mark.slow  # a real model, server, Prefect flow or CLI subprocess

SMALL = ["--set", "backend=transformers", "--set", "shard_size=1", "--set", "n=2", "--set", "parallel_shards=1",
         "--set", "checkpoint_seconds=0", "--set", "verify_workers=1"]


READER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {root!r})
    from distill.warehouse.store import Warehouse

    wh, stop, counts, errors = Warehouse(sys.argv[1]), sys.argv[2], [], []
    while not os.path.exists(stop):
        try:
            counts.append(wh.query("select count(*), count(distinct trace_id) from traces")[1][0])
        except Exception as e:  # a query that fails is a finding: recorded as raised
            if "no warehouse at" not in str(e):  # before the first run record or part
                errors.append(f"{{type(e).__name__}}: {{e}}")
        time.sleep(0.2)
    print(json.dumps({{"counts": counts, "errors": errors}}))
""").format(root=str(ROOT))


def start_worker(root: str, k: int, n: int, limit: int = 8) -> subprocess.Popen:
    return subprocess.Popen([*DISTILL, "run", "recipes/default.yaml", "--limit", str(limit), *SMALL,
                             "--warehouse", root, "--worker", f"{k}/{n}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def shared_run(moto_server, tmp_path_factory):
    """The default recipe on an S3 warehouse, made by four `distill run --worker K/4` processes at once while a
    fifth process queries the warehouse every 0.2 s. Worker 0 is killed (kill -9 of its process group, as a
    preempted machine) once it has stored samples of its own, and started again when the others are done.
    Several tests look at the result, each at one promise."""
    saved = {k: os.environ.get(k) for k in moto_server.env()}
    os.environ.update(moto_server.env())
    try:
        root = f"s3://{moto_server.bucket('four-workers')}/wh"
        wh = Warehouse(root)
        stop = tmp_path_factory.mktemp("reader") / "stop"
        reader = subprocess.Popen([sys.executable, "-c", READER, root, str(stop)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        workers = [start_worker(root, k, 4) for k in range(4)]
        deadline = time.monotonic() + 600
        while not any(r.split("/")[-1].startswith(("ckpt-00000", "ckpt-00004", "part-00000", "part-00004"))
                      for r in wh.storage.list("traces", "run_id=*/*.parquet", recursive=True)):
            assert workers[0].poll() is None, workers[0].communicate()[1][-3000:]
            assert time.monotonic() < deadline, "worker 0 stored nothing"
            time.sleep(0.05)
        os.killpg(workers[0].pid, signal.SIGKILL)
        workers[0].wait(timeout=30)
        outs = [w.communicate(timeout=900) for w in workers[1:]]
        killed = {"status": wh.read_run(wh.run_ids()[0])["status"],
                  "stored": {t for r in wh.storage.list("traces", "run_id=*/*.parquet", recursive=True)
                             for t in wh.storage.read_parquet(r, columns=["trace_id"]).column(0).to_pylist()}}
        again = start_worker(root, 0, 4)
        outs.insert(0, again.communicate(timeout=900))
        workers[0] = again
        stop.touch()
        seen = json.loads(reader.communicate(timeout=120)[0])
        yield root, workers, outs, seen, killed
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_four_workers_write_one_s3_warehouse_while_another_process_queries(shared_run):
    root, workers, outs, seen, _ = shared_run
    for w, (_, err) in zip(workers, outs):
        assert w.returncode == 0, err[-3000:]
    assert all("verified correct" in out for out, _ in outs)
    wh = Warehouse(root)
    run_id, = wh.run_ids()
    run = wh.read_run(run_id)
    assert run["status"] == "finished" and run["workers"] == 4 and len(run["calls"]) == 5  # worker 0 twice
    assert run["worker_status"] == {str(k): "finished" for k in range(4)}
    assert run["recipe"]["warehouse"] == root
    # every shard once, by the worker it belongs to; every sample once
    assert [p.rsplit("/", 1)[1] for p in wh.parts()] == [f"part-{i:05d}.parquet" for i in range(8)]
    assert wh.query("select count(*), count(distinct trace_id) from traces")[1] == [(16, 16)]
    assert wh.query("select status from runs")[1] == [("finished",)]
    # the reader never failed, and never saw a sample twice or a count go down
    assert seen["errors"] == [] and len(seen["counts"]) > 5, seen["errors"][:3]
    assert all(total == distinct for total, distinct in seen["counts"])
    totals = [t for t, _ in seen["counts"]]
    assert totals == sorted(totals) and totals[-1] == 16
    assert (ROOT / "distill-logs").is_dir()  # the engine's log stays on this machine (an object is written whole)
    assert not (ROOT / "s3:").exists()  # the URL was never taken for a local folder


def test_a_worker_killed_mid_run_and_started_again_stores_every_sample_exactly_once(shared_run):
    root, _, _, _, killed = shared_run
    wh = Warehouse(root)
    assert killed["status"] == "running" and killed["stored"]  # the others finished; worker 0 had not
    run = wh.read_run(wh.run_ids()[0])
    # what the killed worker had stored was copied, not paid for again: every sample was generated once
    # (by the killed call or the rerun) or recovered from a checkpoint, never both
    assert sum(c.get("generated") or 0 for c in run["calls"]) + sum(c.get("recovered") or 0 for c in run["calls"]) == 16
    assert killed["stored"] <= {r[0] for r in wh.query("select trace_id from traces")[1]}  # nothing stored was lost
    assert not wh.storage.list(f"traces/run_id={run['run_id']}", "ckpt-*.parquet")  # folded into the parts


def test_every_command_that_reads_the_warehouse_takes_an_s3_url(shared_run, tmp_path):
    root = shared_run[0]
    wh = Warehouse(root)
    run_id, = wh.run_ids()
    assert wh.storage.exists(f"reports/{run_id}.html")  # the flow's report, on the store
    sql = run_cli("sql", "select count(*) as n from traces", "--warehouse", root, "--format", "csv", timeout=120)
    assert sql.returncode == 0 and sql.stdout.split() == ["n", "16"], sql.stderr[-2000:]
    runs = run_cli("runs", "--warehouse", root, timeout=120)
    assert runs.returncode == 0 and run_id in runs.stdout
    report = run_cli("report", run_id, "--warehouse", root, "--out", str(tmp_path / "r.html"), timeout=120)
    assert report.returncode == 0 and run_id in (tmp_path / "r.html").read_text()
    journeys = run_cli("journeys", run_id, "--warehouse", root, timeout=300)
    assert journeys.returncode == 0, journeys.stderr[-2000:]
    assert wh.journey_exists(run_id, "template")
    exported = run_cli("export", "--out", str(tmp_path / "ds"), "--variant", "mixed", "--warehouse", root,
                       timeout=300)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert list((tmp_path / "ds" / "data").glob("train-*.parquet"))
    # training reads the warehouse through export; evaluation stores its result there
    from distill.trainers.sft import TrainConfig, load_rows

    kept = wh.query("select count(*) from accepted where kind = 'sample'")[1][0][0]
    if kept:  # the 135M model may keep nothing; export then has no training rows to give
        rows = load_rows(TrainConfig.build({"data": "warehouse", "warehouse": root, "variant": "shortcut"}))
        assert len(rows) == kept
    ev = run_cli("eval", "--model", "smollm2-135m", "--benchmark", "addition", "--limit", "2", "--n", "1",
                 "--backend", "transformers", "--max-tokens", "16", "--warehouse", root, timeout=600)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert wh.query("select count(*) from evals")[1] == [(1,)]


class Gate:
    """A TCP relay in front of the S3 server that can be shut: the store going away (a network cut, a dead
    endpoint) while moto, which keeps its data in memory only, stays up with everything written so far."""

    def __init__(self, target_port: int):
        self.target, self.port, self.open = target_port, free_port(), True
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while self.open:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def shut(self):
        self.open = False
        self.sock.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass


def test_the_store_going_away_mid_run_is_one_clear_error_and_loses_nothing_written(moto_server, monkeypatch):
    bucket = moto_server.bucket("gone-mid-run")
    gate = Gate(moto_server.port)
    env = {**moto_server.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{gate.port}", "DISTILL_S3_ATTEMPTS": "2"}
    root = f"s3://{bucket}/wh"
    proc = subprocess.Popen([*DISTILL, "run", "recipes/default.yaml", "--limit", "4", *SMALL, "--warehouse", root],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, start_new_session=True)
    direct = {**os.environ, **moto_server.env()}
    for k, v in moto_server.env().items():
        monkeypatch.setenv(k, v)
    wh = Warehouse(root)  # straight to the server, past the gate
    deadline = time.monotonic() + 600
    while not wh.parts():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    gate.shut()
    before = {p: wh.storage.read_bytes(p.split(root + "/", 1)[1]) for p in wh.parts()}
    _, err = proc.communicate(timeout=600)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, err[-3000:]
    assert f"warehouse {root}: cannot" in lines[0] and "testing" not in lines[0]
    assert "Traceback" not in err
    # nothing written before the cut is lost or changed
    after = {p: wh.storage.read_bytes(p.split(root + "/", 1)[1]) for p in wh.parts()}
    assert all(after[p] == b for p, b in before.items())
    # the store back: a rerun finishes the run with every sample once
    rerun = subprocess.run([*DISTILL, "run", "recipes/default.yaml", "--limit", "4", *SMALL, "--warehouse", root],
                           cwd=ROOT, capture_output=True, text=True, env=direct, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert wh.query("select count(*), count(distinct trace_id) from traces")[1] == [(8, 8)]
