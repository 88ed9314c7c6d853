"""Many writers at once: the catalog is never corrupted, no part is lost, and readers keep working.

Real processes, as in production (several workers writing shards of their own runs while someone runs
`distill sql`): WRITERS processes each write PARTS parts of ROWS traces for their own run_id with
`Warehouse.write_part` and call `refresh()` after every part, while a reader process runs queries on
the catalog through `Warehouse.query` in a loop. The scenario runs once per module; each test checks
one promise. Errors are recorded exactly as raised (which call, which exception) and never retried: a
query or refresh that fails because another process holds the catalog is a finding, not noise.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT
from distill.warehouse.store import Warehouse

pytestmark = pytest.mark.slow  # a real model, server, Prefect flow or CLI subprocess

WRITERS, PARTS, ROWS = 4, 5, 40
TIMEOUT = 60

_PRELUDE = textwrap.dedent(f"""
    import json, os, sys, time
    sys.path.insert(0, {str(ROOT)!r})
    from distill.warehouse.store import Warehouse

    def wait_for(path):
        while not os.path.exists(path):
            time.sleep(0.005)

    def failure(call, e, **where):
        return {{"call": call, **where, "error": f"{{type(e).__module__}}.{{type(e).__name__}}: {{e}}"}}
""")

WRITER = _PRELUDE + textwrap.dedent("""
    from distill.warehouse.schema import Trace, make_trace_id, sampling_json

    root, run_id, parts, rows, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    wh = Warehouse(root)
    sampling = sampling_json({"temperature": 0.6, "top_p": 0.95})
    errors, refreshes = [], 0
    wait_for(go)
    for shard in range(parts):
        traces = []
        for i in range(rows):
            problem_id, sample_index = f"{run_id}-s{shard}-p{i // 4}", i % 4
            reasoning = f"shard {shard} row {i}: add the tens, then the ones, and check again."
            prompt = [{"role": "user", "content": f"{problem_id}: what is {i} + {shard}?"}]
            traces.append(Trace(
                trace_id=make_trace_id(prompt, "teacher", sampling, sample_index), run_id=run_id,
                problem_id=problem_id, sample_index=sample_index, source="synthetic", domain="math",
                prompt=prompt, reference=str(i + shard),
                teacher="teacher", backend="test", sampling=sampling,
                completion=f"<think>{reasoning}</think>\\n\\\\boxed{{{i + shard}}}", reasoning=reasoning,
                answer=f"\\\\boxed{{{i + shard}}}", finish_reason="length" if i % 10 == 9 else "stop",
                prompt_tokens=12, completion_tokens=30 + i, latency_s=0.5, correct=i % 3 != 0,
                verifier="math", extracted_answer=str(i + shard), scores={"length": float(i), "rejection": None},
                kept=i % 3 != 0, rejected_by=None if i % 3 else "wrong_answer",
                rejected_stage=None if i % 3 else "rejection"))
        wh.write_part(run_id, shard, traces)  # a failure here is fatal: the process exits non-zero
        try:
            wh.refresh()
            refreshes += 1
        except Exception as e:
            errors.append(failure("Warehouse.refresh", e, run_id=run_id, shard=shard))
    print(json.dumps({"run_id": run_id, "refreshes": refreshes, "errors": errors}))
""")

READER = _PRELUDE + textwrap.dedent("""
    root, ready, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    wh = Warehouse(root)
    QUERIES = ["select count(*), count(distinct trace_id) from traces", "select * from funnel",
               "select count(*) from accepted", "select count(*) from pass_rates",
               "select count(*) from filter_funnel"]
    counts, errors, done, last = [], [], 0, False
    open(ready, "w").close()
    while True:
        last = os.path.exists(stop)  # one more full round after the writers finished
        for sql in QUERIES:
            try:
                _, rows = wh.query(sql)
                done += 1
                if sql.startswith("select count(*), count(distinct"):
                    counts.append(list(rows[0]))
            except Exception as e:
                errors.append(failure("Warehouse.query", e, sql=sql, t=round(time.monotonic(), 3)))
        if last:
            break
    print(json.dumps({"queries_ok": done, "counts": counts, "errors": errors}))
""")


def _spawn(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, dict | None, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = out.strip().splitlines()
    return proc.returncode, (json.loads(lines[-1]) if lines else None), err


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root = tmp_path_factory.mktemp("wh")
    flags = tmp_path_factory.mktemp("flags")
    go, ready, stop = flags / "go", flags / "ready", flags / "stop"
    wh = Warehouse(root)
    wh.refresh()  # the catalog exists (empty views) before anyone reads it

    reader = _spawn(READER, root, ready, stop)
    deadline = time.monotonic() + TIMEOUT
    while not ready.exists() and reader.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    writers = [_spawn(WRITER, root, f"run{w}", PARTS, ROWS, go) for w in range(WRITERS)]
    time.sleep(0.5)  # let the writers import and wait at the start line, then start them together
    go.touch()
    written = [_finish(p) for p in writers]
    stop.touch()
    read = _finish(reader)
    return {"root": root, "wh": wh, "writers": written, "reader": read}


def _show(errors: list[dict], calls: int, limit: int = 3) -> str:
    kinds = sorted({e["error"].split(":")[0] for e in errors})
    return f"{len(errors)} of {calls} calls failed ({', '.join(kinds)}); first ones:\n" + "\n".join(
        json.dumps(e) for e in errors[:limit])


def test_every_process_finished(scenario):
    for code, result, err in [*scenario["writers"], scenario["reader"]]:
        assert code == 0 and result is not None, err[-3000:]


def test_every_part_is_there_exactly_once(scenario):
    wh, root = scenario["wh"], scenario["root"]
    expected = {root / "traces" / f"run_id=run{w}" / f"part-{s:05d}.parquet"
                for w in range(WRITERS) for s in range(PARTS)}
    assert set(wh.parts()) == expected
    for part in expected:  # each file is whole: readable, with all its rows
        assert pq.read_metadata(part).num_rows == ROWS
    wh.refresh()  # everyone has finished: this one cannot collide with anybody
    total = WRITERS * PARTS * ROWS
    assert wh.query("select count(*), count(distinct trace_id) from traces")[1] == [(total, total)]
    _, rows = wh.query("select run_id, samples, problems, truncated from funnel order by run_id")
    assert rows == [(f"run{w}", PARTS * ROWS, PARTS * ROWS // 4, PARTS * ROWS // 10) for w in range(WRITERS)]


def test_no_temporary_file_is_left_behind(scenario):
    assert sorted(p.name for p in Path(scenario["root"]).rglob(".tmp-*")) == []


def test_readers_never_see_half_a_part_or_a_part_disappear(scenario):
    counts = scenario["reader"][1]["counts"]
    assert counts, "the reader never completed a count query"
    totals = [c[0] for c in counts]
    assert all(c[0] == c[1] for c in counts), "duplicate trace_ids seen by a reader"
    assert all(n % ROWS == 0 for n in totals), "a reader saw part of a part"
    assert totals == sorted(totals), "a part disappeared between two reads"
    assert totals[-1] == WRITERS * PARTS * ROWS


def test_queries_never_fail_while_other_processes_refresh(scenario):
    reader = scenario["reader"][1]
    assert reader["queries_ok"] + len(reader["errors"]) >= 20, "the reader did not overlap the writers"
    assert reader["errors"] == [], _show(reader["errors"], reader["queries_ok"] + len(reader["errors"]))


def test_refresh_never_fails_while_other_processes_query(scenario):
    errors = [e for _, result, _ in scenario["writers"] if result for e in result["errors"]]
    assert errors == [], _show(errors, WRITERS * PARTS)
