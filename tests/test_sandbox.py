"""The sandbox against the attacks a teacher's program can make, each bounded so that a broken sandbox
fails the test without hurting the machine (at most 200 short-lived processes, 4 GB asked for once,
a listener on 127.0.0.1 only, files under this test's own names)."""
import os
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from distill.verifiers.sandbox import run_python, namespaces_available

ROOT = Path(__file__).resolve().parents[1]
# As root on Linux (this machine, CI) the namespaces must work: their absence there is a broken sandbox, a
# failure. Elsewhere (macOS, a container without CAP_SYS_ADMIN) there is nothing to test.
ROOT_ON_LINUX = sys.platform == "linux" and os.geteuid() == 0
needs_ns = pytest.mark.skipif(not ROOT_ON_LINUX and not namespaces_available(),
                              reason="Linux namespaces need root on Linux")


@pytest.mark.skipif(not ROOT_ON_LINUX, reason="only root on Linux promises namespaces")
def test_namespaces_work_as_root_on_linux():
    assert namespaces_available(), "root on Linux, but `unshare` fails: the sandbox has no namespaces"
# "plain" is the fallback without namespaces; it must still hold everything it promises.
MODES = [pytest.param(True, id="namespaces", marks=needs_ns),
         pytest.param(False, id="plain", marks=pytest.mark.filterwarnings("ignore:sandbox"))]


def _procs_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_prints_and_exits_zero():
    r = run_python("print('hello')")
    assert (r.ok, r.returncode, r.stdout, r.timed_out, r.killed_reason) == (True, 0, "hello\n", False, None)


def test_exception_is_a_result_not_a_raise():
    r = run_python("raise ValueError('boom')")
    assert not r.ok and r.returncode == 1 and "ValueError: boom" in r.stderr and r.killed_reason is None


def test_stdin_is_passed():
    assert run_python("print(input()[::-1])", stdin="abc").stdout == "cba\n"


def test_isolated_mode_and_no_site():
    r = run_python("import sys; print(sys.flags.isolated, sys.flags.no_site)")
    assert r.stdout == "1 1\n"


@pytest.mark.parametrize("ns", MODES)
def test_infinite_loop_times_out(ns):
    start = time.monotonic()
    r = run_python("while True: pass", timeout_s=1, cpu_s=5, namespaces=ns)
    assert r.timed_out and not r.ok and r.killed_reason == "wall_timeout"
    assert time.monotonic() - start < 5


def test_sleeping_program_times_out():
    r = run_python("import time; time.sleep(30)", timeout_s=1)
    assert r.timed_out and r.killed_reason == "wall_timeout"


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock():
    r = run_python("while True: pass", timeout_s=10, cpu_s=1)
    assert r.timed_out and r.killed_reason == "cpu_time"


@pytest.mark.parametrize("ns", MODES)
def test_memory_bomb_hits_the_limit(ns):
    r = run_python("x = b'x' * (4 << 30)\nprint('allocated')", memory_mb=256, namespaces=ns)
    assert r.memory_exceeded and not r.ok and "allocated" not in r.stdout and r.killed_reason == "memory"


@pytest.mark.parametrize("ns", MODES)
def test_fork_storm_is_limited_and_leaves_no_process(ns):
    marker = f"59.{secrets.randbelow(10**9):09d}"  # `sleep 59.x`: unique on this machine, and ends by itself
    sleep = shutil.which("sleep")
    source = f"""
import os
for i in range(200):
    try:
        pid = os.fork()
    except OSError as e:
        print("fork failed at", i, e.errno)
        raise SystemExit(3)
    if pid == 0:
        try:
            os.execv({sleep!r}, ["sleep", {marker!r}])
        finally:
            os._exit(1)
print("forked 200")
"""
    try:
        r = run_python(source, max_procs=10, namespaces=ns)
        time.sleep(0.2)
        leftover = _procs_with(marker)
    finally:
        for pid in _procs_with(marker):  # tidy up even if the sandbox failed
            os.kill(pid, 9)
    assert not r.ok and "fork failed at" in r.stdout and "forked 200" not in r.stdout
    assert leftover == []


@needs_ns
def test_children_that_leave_the_process_group_are_killed():
    marker = f"58.{secrets.randbelow(10**9):09d}"
    source = f"""
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv({shutil.which('sleep')!r}, ["sleep", {marker!r}])
    os._exit(0)
print("parent done")
"""
    try:
        r = run_python(source)
        time.sleep(0.2)
        leftover = _procs_with(marker)
    finally:
        for pid in _procs_with(marker):
            os.kill(pid, 9)
    assert r.ok and leftover == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the unprivileged uid needs root")
def test_children_that_leave_the_process_group_are_killed_without_namespaces(recwarn):
    marker = f"57.{secrets.randbelow(10**9):09d}"
    source = f"""
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv({shutil.which('sleep')!r}, ["sleep", {marker!r}])
    os._exit(0)
"""
    try:
        run_python(source, namespaces=False)
        time.sleep(0.2)
        leftover = _procs_with(marker)
    finally:
        for pid in _procs_with(marker):
            os.kill(pid, 9)
    assert leftover == []


def attempt_writes(targets, **kw):
    """Run a program that tries to create each target; returns (result, the targets that now exist)."""
    source = f"""
for path in {[str(t) for t in targets]!r}:
    try:
        open(path, "w").write("x")
        print("WROTE", path)
    except OSError as e:
        print("refused", path, e.errno)
"""
    try:
        r = run_python(source, **kw)
        return r, [t for t in targets if t.exists()]
    finally:
        for t in targets:
            t.unlink(missing_ok=True)


@needs_ns
def test_writes_outside_the_sandbox_fail(tmp_path):
    tag = secrets.token_hex(6)
    targets = [tmp_path / f"pwned-{tag}", Path(f"/tmp/distill-pwned-{tag}"), ROOT / f"pwned-{tag}",
               Path(f"/var/tmp/distill-pwned-{tag}"), Path(f"/dev/shm/distill-pwned-{tag}")]
    tmp_path.chmod(0o777)  # even a directory anyone may write to stays out of reach
    r, created = attempt_writes(targets)
    assert r.ok and "WROTE" not in r.stdout and created == []


@pytest.mark.filterwarnings("ignore:sandbox")
@pytest.mark.skipif(os.geteuid() != 0, reason="the unprivileged uid needs root")
def test_writes_to_the_project_and_root_owned_dirs_fail_without_namespaces(tmp_path):
    tag = secrets.token_hex(6)
    targets = [tmp_path / f"pwned-{tag}", ROOT / f"pwned-{tag}"]
    r, created = attempt_writes(targets, namespaces=False)
    assert r.ok and "WROTE" not in r.stdout and created == []


@pytest.mark.parametrize("ns", MODES)
def test_program_may_write_its_own_directory_which_is_deleted_afterwards(ns):
    r = run_python("import os\nopen('out.txt', 'w').write('x' * 10)\nprint(os.getcwd())\n"
                   "print(os.path.getsize('out.txt'))", namespaces=ns)
    workdir = r.stdout.splitlines()[0]
    assert r.ok and r.stdout.splitlines()[1] == "10" and not os.path.exists(workdir)


def test_file_size_limit():
    r = run_python("open('big', 'wb').write(b'x' * (2 << 20))", max_file_mb=1)
    assert not r.ok and r.killed_reason == "file_size"


@needs_ns
def test_network_is_blocked():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        source = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    print("CONNECTED")
except OSError as e:
    print("blocked", e.errno)
"""
        r = run_python(source)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert r.ok and "CONNECTED" not in r.stdout and "blocked" in r.stdout


@pytest.mark.parametrize("ns", MODES)
def test_environment_is_scrubbed(ns, monkeypatch):
    secret = "sk-test-" + secrets.token_hex(8)
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    r = run_python("import os; print(sorted(os.environ.items()))", namespaces=ns)
    assert r.ok and secret not in r.stdout and "OPENAI_API_KEY" not in r.stdout and "HF_TOKEN" not in r.stdout


@pytest.mark.parametrize("ns", MODES)
def test_parent_environment_is_not_readable_through_proc(ns, monkeypatch):
    secret = "hf_" + secrets.token_hex(8)
    monkeypatch.setenv("HF_TOKEN", secret)  # os.environ changes reach /proc/self/environ only via children
    source = f"""
for pid in ({os.getpid()}, {os.getppid()}, 1):
    try:
        print(open(f"/proc/{{pid}}/environ", "rb").read())
    except OSError as e:
        print("refused", pid, e.errno)
"""
    r = run_python(source, namespaces=ns)
    assert r.ok and secret not in r.stdout and "OPENAI_API_KEY" not in r.stdout


def test_huge_output_is_truncated_and_the_program_still_succeeds():
    r = run_python("import sys\nfor _ in range(160): sys.stdout.write('x' * 65536)\nprint('END')")
    assert r.ok and r.output_truncated and len(r.stdout) < 70_000
    assert r.stdout.startswith("xxx") and r.stdout.rstrip().endswith("END") and "truncated" in r.stdout


def test_endless_output_is_capped_and_times_out():
    r = run_python("while True: print('y' * 1000)", timeout_s=1)
    assert r.timed_out and r.output_truncated and len(r.stdout) < 70_000


def test_closing_output_and_hanging_still_times_out():
    r = run_python("import os, time\nos.close(1)\nos.close(2)\ntime.sleep(30)", timeout_s=1)
    assert r.timed_out and r.killed_reason == "wall_timeout"


def test_killed_by_a_signal_is_reported():
    r = run_python("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert not r.ok and r.returncode == -11 and r.killed_reason == "signal:SIGSEGV"


@pytest.mark.filterwarnings("ignore:sandbox")
def test_a_sandbox_that_cannot_start_python_says_so(monkeypatch):
    from distill.verifiers import sandbox
    monkeypatch.setattr(sandbox, "_self_test", lambda use_ns: "self-test failed: no python")
    r = run_python("print(1)")
    assert not r.ok and r.killed_reason == "sandbox_error" and "no python" in r.stderr
