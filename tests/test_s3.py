"""The warehouse on object storage: a real S3 API (moto's server on 127.0.0.1), the same code paths a user's
bucket takes. Parts, checkpoints, run records, decisions and the views; the store going away."""
import json
import time

import pyarrow as pa
import pytest

from distill.errors import DistillError
from distill.warehouse.schema import DECISIONS_SCHEMA
from distill.warehouse.storage import Storage, StorageError
from distill.warehouse.store import Warehouse
from tests.conftest import MotoServer, free_port

pytestmark = pytest.mark.slow  # a real server


def traces_for(make_trace, run_id, n, prefix="p"):
    return [make_trace(trace_id=f"{run_id}-{prefix}{i}", run_id=run_id, problem_id=f"{prefix}{i // 2}",
                       sample_index=i % 2, kept=True) for i in range(n)]


def test_storage_writes_whole_files_lists_and_reads_back(s3_root):
    st = Storage(s3_root)
    assert not st.local and st.url == s3_root and not st.exists("runs/a.json")
    st.write_text("runs/a.json", '{"x": 1}')
    st.write_text("runs/sub/b.json", "{}")
    st.write_parquet("traces/run_id=a/part-00000.parquet", pa.table({"x": [1, 2]}))
    assert st.list("runs", "*.json") == ["runs/a.json"]  # not recursive: a worker's record below is not a run
    assert st.list("runs", "*.json", recursive=True) == ["runs/a.json", "runs/sub/b.json"]
    assert st.list("traces", "run_id=*/part-*.parquet", recursive=True) == ["traces/run_id=a/part-00000.parquet"]
    assert json.loads(st.read_text("runs/a.json")) == {"x": 1}
    assert st.read_parquet("traces/run_id=a/part-00000.parquet").column("x").to_pylist() == [1, 2]
    with pytest.raises(FileNotFoundError):
        st.read_bytes("runs/none.json")
    st.delete("runs/a.json")
    st.delete("runs/a.json")  # gone already: nothing happens
    assert st.list("runs", "*.json") == []


def test_warehouse_on_s3_parts_checkpoints_cache_views_and_records(s3_root, make_trace):
    wh = Warehouse(s3_root)
    assert wh.root == s3_root and wh.part_path("r", 0) == f"{s3_root}/traces/run_id=r/part-00000.parquet"
    with pytest.raises(DistillError, match="no warehouse at"):
        wh.query("select 1")
    rows = traces_for(make_trace, "r", 6)
    wh.write_checkpoint("r", 1, rows[4:])
    wh.write_part("r", 0, rows[:4], expected=4, key="k")
    assert wh.part_exists("r", 0) and wh.part_missing("r", 0, "k") == 0 and wh.part_missing("r", 1) is None
    assert wh.part_missing("r", 0, "other") == 1 and wh.checkpointed_shards("r") == {1}
    found = wh.find_samples([t.trace_id for t in rows] + ["nope"])
    assert set(found) == {t.trace_id for t in rows} and all(origin == "r" for _, origin in found.values())
    assert found["r-p0"][0].endswith("part-00000.parquet") and "ckpt-00001-" in found["r-p4"][0]
    assert [t.trace_id for t in wh.read_samples(found)] == sorted(t.trace_id for t in rows)
    wh.write_run({"run_id": "r", "status": "finished", "recipe": {"n": 2}})
    wh.refresh()
    assert wh.query("select samples, kept from funnel")[1] == [(4, 4)]  # checkpoints are not traces
    assert wh.query("select run_id, status from runs")[1] == [("r", "finished")]
    assert wh.run_ids() == ["r"] and wh.read_run("r")["status"] == "finished"
    wh.drop_checkpoints("r", 1)
    assert wh.checkpointed_shards("r") == set()
    # a decision dropping one row: traces and funnel change, raw_traces and the part do not
    before = wh.storage.read_bytes("traces/run_id=r/part-00000.parquet")
    now = pa.array([time.time_ns() // 1000], pa.timestamp("us", tz="UTC"))
    decision = pa.table({"run_id": ["r"], "trace_id": ["r-p1"], "stage": ["global_dedup"], "score": [1.0],
                         "kept": [False], "rejected_by": ["duplicate"], "detail": ['{"cluster": "r-p0"}'],
                         "created_at": now}, schema=DECISIONS_SCHEMA)
    wh.write_decisions("global_dedup", ["r"], decision)
    assert wh.query("select kept from funnel")[1] == [(3,)]
    assert wh.query("select count(*) from raw_traces where kept")[1] == [(4,)]
    assert wh.query("select rejected_by, rejected_stage, scores['global_dedup'] from traces where trace_id = 'r-p1'")[1] \
        == [("duplicate", "global_dedup", 1.0)]
    assert wh.storage.read_bytes("traces/run_id=r/part-00000.parquet") == before


def test_workers_records_merge_into_the_run_record(s3_root):
    wh = Warehouse(s3_root)
    base = {"run_id": "r", "recipe": {}, "workers": 2}
    wh.write_worker_run({**base, "worker": 0, "status": "finished", "started_at": "2026-01-01T00:00:00",
                         "finished_at": "2026-01-01T00:01:00",
                         "calls": [{"call_id": "a", "started_at": "2026-01-01T00:00:00", "generated": 3,
                                    "timings": {"generate": 1.0}}],
                         "filters_by_shard": [{"shard": 0, "filters": {}, "at": "1"}]}, 0, 2)
    assert wh.read_run("r")["status"] == "incomplete"  # worker 1 has not reported
    wh.write_worker_run({**base, "worker": 1, "status": "running", "started_at": "2026-01-01T00:00:01",
                         "calls": [{"call_id": "b", "started_at": "2026-01-01T00:00:01", "generated": 2,
                                    "timings": {"generate": 2.0}}],
                         "filters_by_shard": [{"shard": 1, "filters": {}, "at": "2"}]}, 1, 2)
    run = wh.read_run("r")
    assert run["status"] == "running" and run["samples_generated"] == 5 and run["timings"] == {"generate": 3.0}
    assert [e["shard"] for e in run["filters_by_shard"]] == [0, 1] and run["worker_status"] == {"0": "finished",
                                                                                                "1": "running"}
    wh.refresh()
    assert wh.query("select status, samples_generated from runs")[1] == [("running", 5)]


def test_an_unreachable_store_is_one_clear_error():
    # nothing listens on this port: a clear error naming the URL, quickly, and no key in it
    import os

    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "AKIDSECRETLOOKING",
           "AWS_SECRET_ACCESS_KEY": "very-secret", "DISTILL_S3_ATTEMPTS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        t0 = time.monotonic()
        with pytest.raises(StorageError) as e:
            Warehouse("s3://bucket/wh").query("select 1")
        assert time.monotonic() - t0 < 60
        msg = str(e.value)
        assert msg.startswith("warehouse s3://bucket/wh: cannot ") and "\n" not in msg
        assert "very-secret" not in msg and "AKIDSECRETLOOKING" not in msg
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_server_gone_then_back_loses_nothing_written(make_trace, monkeypatch):
    server = MotoServer().start()
    try:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("DISTILL_S3_ATTEMPTS", "1")
        root = f"s3://{server.bucket('gone')}/wh"
        wh = Warehouse(root)
        wh.write_part("r", 0, traces_for(make_trace, "r", 4), expected=4)
        port = server.port
        server.stop()
        with pytest.raises(StorageError, match="warehouse s3://gone/wh: cannot write"):
            wh.write_part("r", 1, traces_for(make_trace, "r", 4, prefix="q"), expected=4)
    finally:
        server.stop()
    # moto keeps its data in memory: the same bucket on a restarted server is empty, so check what the
    # client saw instead: the failed write raised, and nothing half-written was listed before the stop
    server = MotoServer(port).start()
    server.stop()


def test_a_workers_stale_copy_of_another_workers_call_never_wins(s3_root):
    wh = Warehouse(s3_root)
    base = {"run_id": "r", "recipe": {}, "workers": 2}
    a_done = {"call_id": "a", "worker": 0, "started_at": "1", "generated": 4, "status": "finished"}
    a_stale = {**a_done, "generated": 0, "status": "running"}  # as worker 1 read it when it started
    wh.write_worker_run({**base, "worker": 0, "status": "finished", "started_at": "1", "calls": [a_done]}, 0, 2)
    wh.write_worker_run({**base, "worker": 1, "status": "finished", "started_at": "2",
                         "calls": [a_stale, {"call_id": "b", "worker": 1, "started_at": "2", "generated": 4}]}, 1, 2)
    run = wh.read_run("r")
    assert run["samples_generated"] == 8 and run["status"] == "finished"
    assert [c["generated"] for c in run["calls"]] == [4, 4]


def _writer(root: str, k: int, n: int) -> None:
    """One worker's writes, as fast as they go: checkpoints, the part, their removal, its record (and the merge)."""
    from distill.warehouse.schema import Trace

    def row(shard, i):
        return Trace(trace_id=f"{shard}-{i}", run_id="r", problem_id=f"p{shard}", sample_index=i, source="s",
                     domain="math", prompt=[{"role": "user", "content": "q"}], reference="1", teacher="t", backend="b",
                     sampling="{}", completion="c", reasoning="r", answer="a", finish_reason="stop", kept=True)

    wh = Warehouse(root)
    for shard in range(k, 32, n):
        wh.write_checkpoint("r", shard, [row(shard, 0)])
        wh.write_part("r", shard, [row(shard, 0), row(shard, 1)], expected=2)
        wh.drop_checkpoints("r", shard)
        wh.write_worker_run({"run_id": "r", "worker": k, "workers": n, "status": "running", "started_at": str(k),
                             "calls": [{"call_id": str(k), "worker": k, "generated": 2 * shard}],
                             "filters_by_shard": [{"shard": shard, "filters": {"f": {"n": shard}}, "at": str(time.time())}]},
                            k, n)


def test_records_rewritten_while_a_reader_queries_never_fail_a_query(s3_root):
    # Objects replaced while they are read (the run record, merged again after every shard of every worker)
    # come back cut from a ranged read: the reader must read them again, never fail or mix two versions.
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    writers = [ctx.Process(target=_writer, args=(s3_root, k, 4)) for k in range(4)]
    for w in writers:
        w.start()
    wh, errors, counts = Warehouse(s3_root), [], []
    while any(w.is_alive() for w in writers):
        try:
            counts.append(wh.query("select count(*), count(distinct trace_id) from traces")[1][0])
            wh.query("select status from runs")
        except DistillError as e:
            if "no warehouse at" not in str(e):
                errors.append(str(e))
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    assert all(w.exitcode == 0 for w in writers)
    assert errors == [] and counts and all(a == b for a, b in counts)
    assert wh.query("select count(*) from traces")[1] == [(64,)] and wh.read_run("r")["samples_generated"] == sum(2 * (28 + k) for k in range(4))
