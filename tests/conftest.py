import os
import signal
import socket
import subprocess
import sys
import time
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
