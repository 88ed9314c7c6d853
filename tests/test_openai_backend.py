"""The openai backend against a real vLLM OpenAI-compatible server of the embedded model, and against
a small fault-injecting HTTP server for what a real server cannot be made to do on demand (429 bursts,
a permanent 401, dropped connections, R1-style `reasoning_content`)."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from distill.generators import make_teacher
from distill.generators.base import SamplingConfig, build_messages
from distill.errors import BackendError
from distill.generators.openai import OpenAIGenerator, sample_seed
from tests.conftest import DISTILL, ROOT, free_port, run_cli, server_metric  # the vllm_server fixture is in conftest
from tests.test_e2e import check_warehouse
from distill.warehouse.store import Warehouse

pytestmark = pytest.mark.slow  # a real vLLM server (and a fault server) on 127.0.0.1

FAKE_KEY = "sk-distill-test-KEY-7f3a9c1e5b"


def sampling(**kw) -> SamplingConfig:
    return SamplingConfig(**{"n": 1, "temperature": 0.6, "top_p": 0.95, "max_tokens": 32, "seed": 0, **kw})


# --------------------------------------------------------------------------------------------------
# Against the real server
# --------------------------------------------------------------------------------------------------

def test_chat_mode_gives_n_samples_with_usage(vllm_server):
    gen = make_teacher("openai", "smollm2-135m", api_base=vllm_server.url, concurrency=8)
    convs = [build_messages("Write one sentence about the sea."), build_messages("What is 2 + 3?")]
    seen = []
    out = gen.generate(convs, sampling(n=3, temperature=1.0, max_tokens=24),
                       on_sample=lambda j, k, s: seen.append((j, k, s)))
    assert [len(s) for s in out] == [3, 3]
    # each sample handed over once, as its request completed: the very objects returned
    assert sorted((j, k) for j, k, _ in seen) == [(j, k) for j in range(2) for k in range(3)]
    assert all(out[j][k] is s for j, k, s in seen)
    for samples in out:
        assert len({s.prompt_tokens for s in samples}) == 1 and samples[0].prompt_tokens > 10
        for s in samples:
            assert s.error is None and s.finish_reason in ("stop", "length") and s.text
            assert 0 < s.completion_tokens <= 24 and s.latency_s > 0
    assert len({s.text for s in out[0]}) > 1  # one request per sample, each with its own seed
    assert gen.stats["retries"] == 0 and gen.stats["requests"] == 6


def test_completions_mode_applies_the_chat_template_locally(vllm_server):
    conv = [build_messages("What is 4 + 4?", "Answer briefly.")]
    chat = make_teacher("openai", "smollm2-135m", api_base=vllm_server.url).generate(conv, sampling(n=2))
    comp = make_teacher("openai", "smollm2-135m", api_base=vllm_server.url,
                          api_mode="completions").generate(conv, sampling(n=2))
    assert len(comp[0]) == 2 and all(s.text and s.completion_tokens > 0 and s.error is None for s in comp[0])
    # the same template as the server's chat endpoint: the same prompt, token for token
    assert comp[0][0].prompt_tokens == chat[0][0].prompt_tokens


def test_small_max_tokens_is_reported_as_length(vllm_server):
    out = make_teacher("openai", "smollm2-135m", api_base=vllm_server.url).generate(
        [build_messages("Tell me a long story about a dragon.")], sampling(n=2, max_tokens=3))
    assert [(s.finish_reason, s.completion_tokens) for s in out[0]] == [("length", 3), ("length", 3)]


def test_unknown_model_fails_fast_with_the_server_in_the_message(vllm_server):
    gen = make_teacher("openai", "no-such-model", api_base=vllm_server.url)
    with pytest.raises(BackendError, match=r"127\.0\.0\.1:\d+/v1 answered HTTP 404.*no-such-model"):
        gen.generate([build_messages("hi")], sampling(n=4))


def test_cli_run_against_the_server(vllm_server, tmp_path):
    wh_dir = tmp_path / "wh"
    proc = run_cli("run", "recipes/default.yaml", "--limit", "3", "--set", "backend=openai",
                   "--set", f"api_base={vllm_server.url}", "--warehouse", str(wh_dir), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wh = Warehouse(wh_dir)
    run_id = check_warehouse(wh, problems=3, n=4)
    assert json.loads((wh_dir / "runs" / f"{run_id}.json").read_text())["backend"] == "openai"
    assert wh.query("select backend, count(*) from traces group by 1")[1] == [("openai", 12)]


def test_server_killed_mid_run_then_rerun_fills_in(vllm_server, tmp_path):
    """A crash of the server in the middle of a run: the finished samples are stored, the run exits 3
    with the count of failed ones; after a restart the same command generates only the missing ones."""
    problems, n = 32, 4
    wh_dir = tmp_path / "wh"
    # max_retries=1: give up quickly once the server is gone (refused connections fail at once, so the
    # timeout can stay generous: a loaded 2-core box can take seconds per request before the crash)
    args = ["run", "recipes/default.yaml", "--limit", str(problems), "--set", "backend=openai",
            "--set", f"api_base={vllm_server.url}", "--set", "max_retries=1", "--set", "request_timeout=60",
            "--set", "shard_size=4", "--warehouse", str(wh_dir)]
    out_log, err_log = tmp_path / "run1.out", tmp_path / "run1.err"
    with open(out_log, "w") as out, open(err_log, "w") as err:
        proc = subprocess.Popen([*DISTILL, *args], cwd=ROOT, stdout=out, stderr=err, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 300
        while not list(wh_dir.glob("traces/run_id=*/part-*.parquet")):
            assert proc.poll() is None, f"run ended before any part was written:\n{err_log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no part file after 300 s"
            time.sleep(0.1)
        time.sleep(0.3)  # into the next shard (about a second each): some requests in flight, some finished
        assert proc.poll() is None, "the run finished before the server could be killed"
        vllm_server.kill()
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err_log.read_text()
    assert code == 3, stderr[-3000:]
    failed = int(re.search(r"^(?:error: )?(\d+) samples failed", stderr, re.M).group(1))  # the CLI's one line
    wh = Warehouse(wh_dir)
    before = dict(wh.query("select trace_id, completion from traces")[1])
    assert 0 < len(before) < problems * n and len(before) + failed == problems * n, stderr[-3000:]
    assert "connection error" in stderr
    (run_id, status), = wh.query("select run_id, status from runs")[1]
    assert status == "incomplete"

    vllm_server.start()  # same port, so the same recipe: the rerun resumes the same run
    second = run_cli(*args, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    cols, rows = wh.query("select count(*), count(distinct trace_id), count(distinct (problem_id, sample_index)) "
                          "from traces")
    assert rows == [(problems * n,) * 3]
    after = dict(wh.query("select trace_id, completion from traces")[1])
    assert {k: after.get(k) for k in before} == before  # the kept ones are the same rows, not regenerated
    check_warehouse(wh, problems=problems, n=n)


def test_sigkill_mid_shard_then_rerun_asks_the_server_only_for_unsaved_samples(vllm_server, tmp_path):
    """kill -9 of `distill run` with requests in flight: the samples checkpointed before the kill are never
    requested again. The server's own count of finished requests says so."""
    import pyarrow.parquet as pq

    from distill.flows.generate import problems_for, sample_ids
    from distill.flows.recipe import load_recipe

    wh_dir = tmp_path / "wh"
    args = ["run", "recipes/default.yaml", "--limit", "8", "--set", "backend=openai", "--set",
            f"api_base={vllm_server.url}", "--set", "shard_size=8", "--set", "concurrency=4",
            "--set", "checkpoint_seconds=0", "--warehouse", str(wh_dir)]

    def saved() -> set[str]:
        files = sorted(wh_dir.glob("traces/run_id=*/ckpt-*.parquet"))
        return {t for f in files for t in pq.read_table(f, columns=["trace_id"]).column(0).to_pylist()}

    proc = subprocess.Popen([*DISTILL, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while len(saved()) < 6:
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not list(wh_dir.glob("traces/run_id=*/part-*.parquet"))  # killed inside the shard
    kept = saved()
    assert 6 <= len(kept) < 8 * 4
    # the requests in flight at the kill are aborted or finish on the server; then count what it finished
    deadline = time.monotonic() + 120
    while server_metric(vllm_server, "vllm:num_requests_running") + server_metric(vllm_server,
                                                                                   "vllm:num_requests_waiting"):
        assert time.monotonic() < deadline, "the server never went idle"
        time.sleep(0.5)
    before = server_metric(vllm_server, "vllm:request_success_total")

    rerun = run_cli(*args, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    wh = Warehouse(wh_dir)
    (run_id,), = wh.query("select run_id from runs")[1]
    call = wh.read_run(run_id)["calls"][-1]
    assert (call["recovered"], call["generated"]) == (len(kept), 8 * 4 - len(kept))
    # the server finished exactly the requests of the samples that were not saved: none was asked twice
    assert server_metric(vllm_server, "vllm:request_success_total") - before == 8 * 4 - len(kept)
    recipe = load_recipe(ROOT / "recipes" / "default.yaml", {"limit": 8})
    expected = {t for p in problems_for(recipe, ROOT / "recipes") for t in sample_ids(recipe, p)}
    got = [r[0] for r in wh.query("select trace_id from traces")[1]]
    assert sorted(got) == sorted(expected) and kept <= set(got)
    assert not list(wh_dir.glob("traces/run_id=*/ckpt-*.parquet"))


# --------------------------------------------------------------------------------------------------
# A fault-injecting server: 429/5xx bursts, 401, dropped connections, reasoning_content, slow answers
# --------------------------------------------------------------------------------------------------

def ok_body(content: str = "4", reasoning: dict | None = None, finish: str = "stop") -> dict:
    return {"id": "x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **(reasoning or {})},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}


class FaultServer:
    """Answers POSTs from a script, one action per request, then 200 with `ok_body()`.
    Actions: ("status", code, headers, body) | ("drop",) | ("sleep", seconds) | ("ok", body)."""

    def __init__(self, script=()):
        self.script, self.requests, self.lock = list(script), [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with outer.lock:
                    outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                           "body": body, "t": time.monotonic()})
                    action = outer.script.pop(0) if outer.script else ("ok", ok_body())
                if action[0] == "drop":  # close the socket without a byte of answer
                    self.close_connection = True
                    return
                if action[0] == "sleep":
                    time.sleep(action[1])
                    action = ("ok", ok_body())
                code, headers, payload = (200, {}, action[1]) if action[0] == "ok" else action[1:]
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, cancelled)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fault_server():
    servers = []

    def make(script=()):
        servers.append(FaultServer(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_burst_of_429_and_5xx_is_retried_then_succeeds(fault_server, caplog, monkeypatch):
    monkeypatch.setenv("DISTILL_TEST_KEY", FAKE_KEY)
    s = fault_server([("status", 429, {"Retry-After": "0"}, {"error": {"message": "rate limited"}}),
                      ("status", 429, {"Retry-After": "0"}, {"error": {"message": "rate limited"}}),
                      ("status", 500, {}, {"error": {"message": "boom"}}),
                      ("status", 503, {}, {"detail": "overloaded"})])
    gen = OpenAIGenerator("m", api_base=s.url, api_key_env="DISTILL_TEST_KEY", concurrency=1)
    caplog.set_level(logging.DEBUG, logger="distill.openai")
    out = gen.generate([build_messages("What is 2 + 2?")], sampling(n=2, stop=["\n\n"], seed=5))
    assert [(x.text, x.finish_reason, x.prompt_tokens, x.completion_tokens, x.error) for x in out[0]] == \
        [("4", "stop", 11, 7, None)] * 2
    assert len(s.requests) == 6 and gen.stats["retries"] == 4
    bodies = [r["body"] for r in s.requests]
    assert all(b["n"] == 1 and b["max_tokens"] == 32 and b["temperature"] == 0.6 and b["top_p"] == 0.95
               and b["stop"] == ["\n\n"] and b["model"] == "m" for b in bodies)
    assert all(r["path"] == "/v1/chat/completions" and r["auth"] == f"Bearer {FAKE_KEY}" for r in s.requests)
    # one seed per sample, the same on every retry of that sample
    assert len({b["seed"] for b in bodies}) == 2 and bodies[0]["seed"] == bodies[4]["seed"]
    assert "HTTP 429" in caplog.text and FAKE_KEY not in caplog.text


def test_retries_exhausted_give_an_error_sample_and_keep_the_rest(fault_server):
    s = fault_server([("status", 503, {}, {"error": {"message": "down"}})] * 3)
    gen = OpenAIGenerator("m", api_base=s.url, concurrency=1, max_retries=2)
    out = gen.generate([build_messages("a"), build_messages("b")], sampling(n=1))
    (bad,), (good,) = out
    assert bad.finish_reason == "error" and bad.text == "" and bad.completion_tokens is None
    assert bad.error.startswith("HTTP 503") and bad.error.endswith("after 2 retries") and "\n" not in bad.error
    assert good.finish_reason == "stop" and good.text == "4" and len(s.requests) == 4


def test_a_dead_vllm_engine_is_explained(fault_server):
    dead = {"error": {"message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                      "type": "InternalServerError", "code": 500}}
    s = fault_server([("status", 500, {}, dead)] * 2)
    out = OpenAIGenerator("m", api_base=s.url, max_retries=1).generate([build_messages("a")], sampling())
    assert "engine died" in out[0][0].error and "--no-enable-chunked-prefill" in out[0][0].error


def test_retry_after_delays_the_retry(fault_server):
    s = fault_server([("status", 429, {"Retry-After": "1"}, {"error": {"message": "slow down"}})])
    OpenAIGenerator("m", api_base=s.url).generate([build_messages("a")], sampling())
    assert len(s.requests) == 2 and s.requests[1]["t"] - s.requests[0]["t"] >= 0.9


def test_retry_after_as_an_http_date_delays_the_retry(fault_server):
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3))  # 2 to 3 s from now
    s = fault_server([("status", 503, {"Retry-After": when}, {"error": {"message": "maintenance"}})])
    out = OpenAIGenerator("m", api_base=s.url).generate([build_messages("a")], sampling())
    assert out[0][0].text == "4" and len(s.requests) == 2
    assert 1.5 <= s.requests[1]["t"] - s.requests[0]["t"] <= 4.5  # not the 0.5 s of the first backoff


class Recorder:
    """An on_sample that keeps what it was given, and the thread it was called from."""

    def __init__(self, fail_at: int | None = None):
        self.calls, self.threads, self.fail_at = [], set(), fail_at

    def __call__(self, j, k, sample):
        self.threads.add(threading.get_ident())
        self.calls.append((j, k, sample))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise RuntimeError("disk full")


@pytest.mark.parametrize("status, said", [
    (403, "this key may not use model m"),
    (422, "temperature: value is not a valid float"),
    (400, "stop must be a list of at most 4 strings"),
])
def test_a_refused_request_fails_alone_and_the_rest_come_back(fault_server, status, said):
    body = {"detail": said} if status == 422 else {"error": {"message": said}}
    s = fault_server([("ok", ok_body("1")), ("ok", ok_body("2")), ("status", status, {}, body)])
    seen = Recorder()
    out = OpenAIGenerator("m", api_base=s.url, concurrency=1).generate(
        [build_messages(q) for q in "abc"], sampling(n=2), on_sample=seen)
    flat = [x for o in out for x in o]
    assert [x.finish_reason for x in flat] == ["stop", "stop", "error", "stop", "stop", "stop"]
    bad = flat[2]
    assert bad.error.startswith(f"HTTP {status} ") and bad.error.endswith(f"({said})")
    assert "\n" not in bad.error and bad.text == "" and bad.completion_tokens is None
    assert len(s.requests) == 6  # no retry of a refused request, and the call went on after it
    assert [(j, k) for j, k, _ in seen.calls] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert all(out[j][k] is x for j, k, x in seen.calls) and seen.threads == {threading.get_ident()}


def test_401_mid_call_raises_after_handing_over_the_finished_samples(fault_server):
    s = fault_server([("ok", ok_body("1")), ("ok", ok_body("2")), ("ok", ok_body("3"))]
                     + [("status", 401, {}, {"error": {"message": "key revoked"}})] * 20)
    seen = Recorder()
    with pytest.raises(BackendError, match=r"^backend openai: .* answered HTTP 401 .*key revoked") as e:
        OpenAIGenerator("m", api_base=s.url, concurrency=1).generate(
            [build_messages(f"q{i}") for i in range(4)], sampling(n=2), on_sample=seen)
    assert "\n" not in str(e.value)
    assert [(j, k, x.text) for j, k, x in seen.calls] == [(0, 0, "1"), (0, 1, "2"), (1, 0, "3")]
    assert len(s.requests) == 4  # the 401 stopped the call: nothing sent after it


def test_breaker_stops_a_server_that_refuses_everything(fault_server):
    s = fault_server([("status", 403, {}, {"error": {"message": "organization suspended"}})] * 100)
    seen = Recorder()
    gen = OpenAIGenerator("m", api_base=s.url, concurrency=4)
    with pytest.raises(BackendError) as e:
        gen.generate([build_messages(f"q{i}") for i in range(10)], sampling(n=4), on_sample=seen)
    msg = str(e.value)
    assert "refused the first 8 requests" in msg and "HTTP 403" in msg and "organization suspended" in msg
    assert s.url in msg and "\n" not in msg
    # the eight, and any that completed at the same moment: every completed one is handed over
    assert 8 <= len(seen.calls) <= len(s.requests) and all(x.finish_reason == "error" for _, _, x in seen.calls)
    assert len(s.requests) < 8 + 4  # at most the requests already in flight beyond the eighth, of 40


def test_one_success_keeps_the_breaker_open(fault_server):
    s = fault_server([("ok", ok_body())] + [("status", 403, {}, {"error": {"message": "no"}})] * 11)
    out = OpenAIGenerator("m", api_base=s.url, concurrency=1).generate(
        [build_messages(f"q{i}") for i in range(12)], sampling(n=1))
    assert [x.finish_reason for o in out for x in o] == ["stop"] + ["error"] * 11
    assert len(s.requests) == 12


def test_an_on_sample_that_raises_stops_the_call(fault_server):
    s = fault_server([("sleep", 0.2)] * 20)
    seen = Recorder(fail_at=1)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="disk full"):
        OpenAIGenerator("m", api_base=s.url, concurrency=2).generate(
            [build_messages(f"q{i}") for i in range(10)], sampling(n=2), on_sample=seen)
    assert len(seen.calls) == 1 and time.monotonic() - t0 < 2
    time.sleep(0.3)
    assert len(s.requests) <= 4  # those in flight and those that took their slots; the other 16 never sent


def test_permanent_401_fails_fast_and_never_shows_the_key(fault_server, monkeypatch, caplog):
    monkeypatch.setenv("DISTILL_TEST_KEY", FAKE_KEY)
    # a server that echoes the key it was given: the message must not carry it on
    s = fault_server([("status", 401, {}, {"error": {"message": f"Incorrect API key provided: {FAKE_KEY}"}})] * 50)
    gen = OpenAIGenerator("m", api_base=s.url, api_key_env="DISTILL_TEST_KEY", concurrency=4)
    caplog.set_level(logging.DEBUG, logger="distill.openai")
    t0 = time.monotonic()
    with pytest.raises(BackendError) as e:
        gen.generate([build_messages(f"q{i}") for i in range(8)], sampling(n=4))
    assert time.monotonic() - t0 < 3
    msg = str(e.value)
    assert "\n" not in msg and "HTTP 401" in msg and s.url in msg and "DISTILL_TEST_KEY" in msg
    assert FAKE_KEY not in msg and FAKE_KEY not in caplog.text
    assert len(s.requests) <= 8  # no retries of a 401


def test_401_without_a_key_says_which_variable_to_set(fault_server, monkeypatch):
    monkeypatch.delenv("DISTILL_TEST_KEY", raising=False)
    s = fault_server([("status", 401, {}, {"error": {"message": "no key"}})])
    with pytest.raises(BackendError, match="DISTILL_TEST_KEY is not set"):
        OpenAIGenerator("m", api_base=s.url, api_key_env="DISTILL_TEST_KEY").generate([build_messages("a")], sampling())
    assert s.requests[0]["auth"] == "Bearer EMPTY"


def test_dropped_connection_is_retried(fault_server):
    s = fault_server([("drop",), ("drop",)])
    gen = OpenAIGenerator("m", api_base=s.url, concurrency=1)
    out = gen.generate([build_messages("a")], sampling(n=1))
    assert out[0][0].text == "4" and out[0][0].error is None and len(s.requests) == 3


def test_connection_refused_everywhere_returns_error_samples():
    gen = OpenAIGenerator("m", api_base=f"http://127.0.0.1:{free_port()}/v1", max_retries=2)
    out = gen.generate([build_messages("a"), build_messages("b")], sampling(n=2))
    assert [len(o) for o in out] == [2, 2]
    assert all(x.finish_reason == "error" and "connection error" in x.error and "after 2 retries" in x.error
               for o in out for x in o)


def test_timeout_is_transient(fault_server):
    s = fault_server([("sleep", 3.0)])
    gen = OpenAIGenerator("m", api_base=s.url, request_timeout=0.5, max_retries=1)
    t0 = time.monotonic()
    out = gen.generate([build_messages("a")], sampling())
    assert out[0][0].text == "4" and len(s.requests) == 2 and time.monotonic() - t0 < 2.5


def test_reasoning_content_is_folded_into_think_tags(fault_server):
    s = fault_server([("ok", ok_body("\\boxed{4}", {"reasoning_content": "2 plus 2 is 4."})),
                      ("ok", ok_body("\\boxed{4}", {"reasoning": "two and two"}, finish="length"))])
    out = OpenAIGenerator("m", api_base=s.url, concurrency=1).generate([build_messages("a")], sampling(n=2))
    assert [x.text for x in out[0]] == ["<think>2 plus 2 is 4.</think>\\boxed{4}", "<think>two and two</think>\\boxed{4}"]
    assert out[0][1].finish_reason == "length"
    from distill.warehouse.schema import split_think

    assert split_think(out[0][0].text) == ("2 plus 2 is 4.", "\\boxed{4}")


def test_seeds_follow_sample_indices_and_prompts():
    assert sample_seed(0, 0, "p") == sample_seed(0, 0, "p") < 2 ** 31
    assert len({sample_seed(0, i, p) for i in range(4) for p in ("p", "q")} | {sample_seed(1, 0, "p")}) == 9


def test_resumed_indices_get_their_own_seeds(fault_server):
    s = fault_server()
    gen = OpenAIGenerator("m", api_base=s.url, concurrency=1)
    conv = [build_messages("a")]
    gen.generate(conv, sampling(n=4))
    gen.generate(conv, sampling(n=2), indices=[[1, 3]])  # a resumed shard regenerating samples 1 and 3
    seeds = [r["body"]["seed"] for r in s.requests]
    assert seeds[4:] == [seeds[1], seeds[3]]
    OpenAIGenerator("m", api_base=s.url, send_seed=False).generate(conv, sampling())
    assert "seed" not in s.requests[-1]["body"]


def test_generate_works_inside_a_running_event_loop(fault_server):
    s = fault_server()
    gen = OpenAIGenerator("m", api_base=s.url)
    seen = Recorder()

    async def caller():
        return gen.generate([build_messages("a")], sampling(n=2), on_sample=seen)

    assert [x.text for x in asyncio.run(caller())[0]] == ["4", "4"]
    # the loop ran in a helper thread; on_sample still ran in the caller's
    assert len(seen.calls) == 2 and seen.threads == {threading.get_ident()}


def test_an_on_sample_that_raises_inside_a_running_event_loop_stops_the_call(fault_server):
    s = fault_server([("sleep", 0.2)] * 20)
    seen = Recorder(fail_at=1)

    async def caller():
        return OpenAIGenerator("m", api_base=s.url, concurrency=2).generate(
            [build_messages(f"q{i}") for i in range(10)], sampling(n=2), on_sample=seen)

    with pytest.raises(RuntimeError, match="disk full"):
        asyncio.run(caller())
    time.sleep(0.3)
    assert len(seen.calls) == 1 and len(s.requests) <= 4


def test_bad_configuration_fails_at_construction():
    with pytest.raises(BackendError, match="api_base must be an http"):
        OpenAIGenerator("m", api_base=None)
    with pytest.raises(BackendError, match="needs a tokenizer"):
        OpenAIGenerator("gpt-4o-mini", api_base="http://127.0.0.1:1/v1", api_mode="completions")


def test_a_403_on_one_request_mid_shard_keeps_the_shards_other_samples(fault_server, tmp_path):
    """`distill run` against a server that refuses one request of a shard: the shard's other samples are
    stored, the run exits 3 naming the refusal, and the rerun asks for that one sample only."""
    s = fault_server([("ok", ok_body("<think>1 + 2 is 3.</think> \\boxed{3}"))] * 5
                     + [("status", 403, {}, {"error": {"message": "content policy"}})])
    wh_dir = tmp_path / "wh"
    args = ["run", "recipes/default.yaml", "--limit", "4", "--set", "backend=openai", "--set", f"api_base={s.url}",
            "--set", "concurrency=1", "--set", "shard_size=4", "--set", "n=2", "--warehouse", str(wh_dir)]
    first = run_cli(*args, timeout=300)
    assert first.returncode == 3, first.stderr[-3000:]
    assert "1 samples failed" in first.stderr and "HTTP 403" in first.stderr and "content policy" in first.stderr
    wh = Warehouse(wh_dir)
    (run_id, status), = wh.query("select run_id, status from runs")[1]
    assert status == "incomplete" and wh.query("select count(*) from traces")[1] == [(7,)]
    assert wh.read_run(run_id)["failures"][0]["error"].startswith("HTTP 403")
    asked = len(s.requests)
    second = run_cli(*args, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(s.requests) - asked == 1  # only the refused sample was asked again
    assert wh.query("select count(*), count(distinct trace_id) from traces")[1] == [(8, 8)]
