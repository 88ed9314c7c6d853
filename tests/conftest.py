import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DISTILL = [sys.executable, "-m", "distill.flows.cli"]

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
# A loaded 2-core machine can take longer than the default 20 s to start Prefect's temporary server.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 900, env: dict | None = None):
    """The `distill` command as a user runs it: a real subprocess."""
    return subprocess.run([*DISTILL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


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
