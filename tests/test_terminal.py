"""What `distill run` shows on a terminal: the progress bar, the funnel and the query hint; the engine's
logs (vLLM, Triton, NUMA, tcmalloc, Prefect, shutdown warnings) go to <warehouse>/logs/RUN_ID.log."""
import os
import pty
import re
import select
import subprocess
import time

from tests.conftest import DISTILL, ROOT
import pytest

pytestmark = pytest.mark.slow  # a real model, server, Prefect flow or CLI subprocess

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_a_terminal(*args: str, timeout: float = 900) -> tuple[int, list[str]]:
    """The CLI with stdout and stderr on a pseudo-terminal, as a user sees it; returns its lines
    (a progress bar's redraws, split by carriage returns, count as one line)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*DISTILL, *args], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env={**os.environ, "COLUMNS": "120"})
    os.close(slave)
    data, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every holder of the terminal has closed it
                    break
                if not chunk:
                    break
                data += chunk
            elif proc.poll() is not None:
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = ANSI.sub("", data.decode("utf-8", errors="replace")).replace("\r\n", "\n")
    return proc.returncode, [line.split("\r")[-1] or line for line in text.split("\n") if line.strip()]


def test_run_on_a_terminal_shows_only_progress_funnel_and_hint(tmp_path):
    wh = tmp_path / "wh"
    # vLLM (the default backend here), whose engine processes make the noise; a small KV cache, so that the
    # engine starts on a machine shared with other work
    code, lines = run_on_a_terminal("run", "recipes/default.yaml", "--limit", "2", "--set", "n=2",
                                    "--set", "max_tokens=16", "--set", "gpu_memory_utilization=0.15",
                                    "--warehouse", str(wh))
    assert code == 0, "\n".join(lines)
    table = re.compile(r"^[\s┏┃┡│└━─┳╇┴┻┗┓┩┘┛┼╈]*$|^[┃│]")  # the funnel's borders and rows
    allowed = [re.compile(r"shards:"), re.compile(r"^\s*(funnel —|by step)"),
               re.compile(r"^tokens generated: "), re.compile(r"^query it: distill sql ")]
    stray = [line for line in lines if not (table.search(line) or any(a.search(line) for a in allowed))]
    assert stray == [], "\n".join(lines)
    assert any("query it:" in line for line in lines)
    # the engine's own logs, its shutdown warnings included, are in the run's log file
    (log,) = (wh / "logs").glob("*.log")
    text = log.read_text(errors="replace")
    # (which of vLLM's lines come depends on its environment and on timing: its warnings at start-up, the
    # shutdown ones only when an engine process is slow to stop; any of them shows where they all go)
    assert "distill run recipes/default.yaml" in text and "vllm" in text.lower()
    assert re.search(r"^run \S+: 2 problems × 2 samples", text, re.M)  # the run's header, logged
