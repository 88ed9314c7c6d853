"""Run untrusted Python (a teacher's program) in a separate, limited process.

`run_python(source)` returns a `SandboxResult` and never raises for anything the program does.
Layers, strongest first (verifiers/SANDBOX.md says what each one covers and what it does not):

1. Linux namespaces through util-linux `unshare`, when they work (as root, or unprivileged user
   namespaces otherwise): a PID namespace (when the program's first process ends, the kernel kills
   every process it left behind), a network namespace with no interface up (no network, not even
   127.0.0.1), a mount namespace in which /root, /home, /tmp, /var/tmp, /dev/shm and /run are hidden
   behind empty tmpfs, the working directory is a small tmpfs of its own, and every other mount is
   read-only; IPC and UTS namespaces too.
2. As root: the program runs as a fresh unprivileged uid (one per call, in no group, with
   no_new_privs), so RLIMIT_NPROC applies to it (root ignores it) and it cannot write anything it
   does not own.
3. Always: `python -I -S -B -u`, a scrubbed environment, a fresh working directory deleted afterwards,
   rlimits (CPU, address space, processes, file size, open files, no core), a wall-clock timeout that
   kills the whole process group, and stdout/stderr read with a cap.

The program is started by this same file run as a script (`_inner`): it sets up the mounts while it is
still root inside the namespaces, forks, limits and drops the child, and execs the program.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache

OUTPUT_CAP = 64 * 1024          # bytes kept of stdout and of stderr, each
_TAIL = 8 * 1024                # of which the last bytes: a traceback is at the end
_UID_BASE, _UID_SPAN = 1_500_000_000, 100_000_000   # sandbox uids: in no passwd file, one per call
_HIDE = ("/root", "/home", "/tmp", "/var/tmp", "/dev/shm", "/run")
_NS_FLAGS = ["--pid", "--fork", "--kill-child", "--net", "--mount", "--mount-proc", "--ipc", "--uts"]
_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(slots=True)
class SandboxResult:
    ok: bool                     # exited 0, not timed out, not killed
    returncode: int | None       # negative: killed by that signal (subprocess's convention)
    stdout: str
    stderr: str
    timed_out: bool = False      # wall clock or CPU time
    memory_exceeded: bool = False
    killed_reason: str | None = None   # wall_timeout | cpu_time | memory | file_size | signal:NAME | sandbox_error
    output_truncated: bool = False


def run_python(source: str, *, timeout_s: float = 10, cpu_s: float | None = None, memory_mb: int = 512,
               max_procs: int = 32, max_file_mb: int = 16, stdin: str | bytes | None = None,
               namespaces: bool | None = None) -> SandboxResult:
    """Run `source` as a Python program in the sandbox.

    cpu_s defaults to timeout_s. max_procs counts processes and threads. max_file_mb bounds each file the
    program writes; with namespaces the whole working directory is a tmpfs of 4 x max_file_mb.
    namespaces: None uses them when they work here, False never (the plain fallback), True requires them.
    """
    use_ns = namespaces_available() if namespaces is None else namespaces
    if not use_ns:
        why = "namespaces=False" if namespaces is False else _self_test(True)
        warnings.warn(f"sandbox: running without Linux namespaces ({why}): no network, PID or mount isolation",
                      stacklevel=2)
    # A sandbox that cannot start Python would fail every program: say so instead of judging them wrong.
    problem = _self_test(use_ns)
    if problem:
        return _failed(problem)
    return _run(source, use_ns=use_ns, timeout_s=timeout_s, cpu_s=timeout_s if cpu_s is None else cpu_s,
                memory_mb=memory_mb, max_procs=max_procs, max_file_mb=max_file_mb, stdin=stdin)


def namespaces_available() -> bool:
    """Whether the namespace sandbox works here (`unshare` runs and a trivial program passes; checked once)."""
    return _self_test(True) is None


@lru_cache(maxsize=2)
def _self_test(use_ns: bool) -> str | None:
    """None if a trivial program runs in this mode, else what went wrong."""
    if use_ns:
        unshare = shutil.which("unshare")
        if not unshare:
            return "`unshare` (util-linux) is not installed"
        try:
            probe = subprocess.run([unshare, *_ns_flags(), "--", _base_python(), "-I", "-S", "-c", ""],
                                   capture_output=True, timeout=30, env={"PATH": _PATH})
        except (OSError, subprocess.SubprocessError) as e:
            return f"`unshare` failed: {e}"
        if probe.returncode != 0:
            return f"`unshare` failed: {probe.stderr.decode(errors='replace').strip()[-300:]}"
    r = _run("print(6 * 7)", use_ns=use_ns, timeout_s=30, cpu_s=30, memory_mb=512, max_procs=32, max_file_mb=16,
             stdin=None)
    if r.ok and r.stdout == "42\n":
        return None
    return f"self-test failed (rc={r.returncode}): {r.stderr.strip()[-300:]}"


def _run(source: str, *, use_ns: bool, timeout_s: float, cpu_s: float, memory_mb: int, max_procs: int,
         max_file_mb: int, stdin: str | bytes | None) -> SandboxResult:
    root = os.geteuid() == 0
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if root else None
    python = _interpreter(for_uid=uid if (uid is not None and not use_ns) else None)
    if python is None:  # root, no mount namespace, and no interpreter another uid may run
        warnings.warn("sandbox: no Python interpreter is readable by an unprivileged uid; running as root")
        python, uid = _base_python(), None

    workdir = tempfile.mkdtemp(prefix="distill-sandbox-")
    stdin_file = None
    status_r = status_w = -1
    try:
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8", errors="replace") as f:
            f.write(source)
        if uid is not None:
            os.chown(workdir, uid, uid)
        cpu = int(max(1, round(cpu_s)))
        # Not root and no namespace: RLIMIT_NPROC counts all our uid's processes, so allow ours on top.
        nproc = max_procs if uid is not None or use_ns else max_procs + _count_procs(os.getuid())
        env = {"PATH": _PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
        status_r, status_w = os.pipe()
        cfg = {
            "python": python, "workdir": workdir, "uid": uid, "env": env, "status_fd": status_w,
            "timeout_s": timeout_s, "mount": use_ns, "hide": [d for d in _HIDE if os.path.isdir(d)],
            "keep": [_prefix_of(python)], "tmpfs_mb": 4 * max_file_mb,
            "limits": {"CPU": [cpu, cpu + 1], "AS": [memory_mb << 20] * 2, "NPROC": [nproc] * 2,
                       "FSIZE": [max_file_mb << 20] * 2, "CORE": [0, 0], "NOFILE": [256, 256]},
        }
        cmd = [python, "-I", "-S", "-B", os.path.abspath(__file__), json.dumps(cfg)]
        if use_ns:
            cmd = [shutil.which("unshare") or "unshare", *_ns_flags(), "--", *cmd]
        if stdin is not None:
            stdin_file = tempfile.TemporaryFile()
            stdin_file.write(stdin.encode() if isinstance(stdin, str) else stdin)
            stdin_file.seek(0)
        try:
            proc = subprocess.Popen(cmd, stdin=stdin_file or subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, cwd=workdir, start_new_session=True,
                                    pass_fds=(status_w,))
        except OSError as e:
            return _failed(f"could not start the sandbox: {e}")
        os.close(status_w)
        status_w = -1
        out, err, wall_timeout = _collect(proc, timeout_s, sweep=(uid, python) if not use_ns else None)
        status = _read_status(status_r)
    finally:
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        if stdin_file is not None:
            stdin_file.close()
        _rmtree(workdir)
    return _result(proc.returncode, status, out, err, wall_timeout)


def _ns_flags() -> list[str]:
    # Unprivileged: a user namespace in which we are root makes the other namespaces possible.
    return _NS_FLAGS if os.geteuid() == 0 else ["--user", "--map-root-user", *_NS_FLAGS]


# ---- the parent side -------------------------------------------------------------------------------

class _Capped:
    """First bytes and last bytes of a stream; everything in between is counted and dropped."""

    def __init__(self, cap: int = OUTPUT_CAP, tail: int = _TAIL):
        self.head_cap, self.tail_cap = cap - tail, tail
        self.head, self.tail, self.total = bytearray(), bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_cap - len(self.head)  # never negative
        self.head += chunk[:room]
        self.tail += chunk[room:]
        del self.tail[:-self.tail_cap]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + len(self.tail)

    def text(self) -> str:
        head = self.head.decode("utf-8", "replace")
        if not self.truncated:
            return head + self.tail.decode("utf-8", "replace")
        dropped = self.total - len(self.head) - len(self.tail)
        return f"{head}\n[... {dropped} bytes truncated ...]\n{self.tail.decode('utf-8', 'replace')}"


def _collect(proc: subprocess.Popen, timeout_s: float, sweep) -> tuple[_Capped, _Capped, bool]:
    """Drain stdout/stderr with a cap until the program is done; kill its group on the wall timeout.

    The group is also killed once the first process has exited (its leader, unreaped, still holds the
    group id, so the id cannot have been reused): without a PID namespace that is what ends the
    children it left behind.
    """
    out, err = _Capped(), _Capped()
    sel = selectors.DefaultSelector()
    for pipe, buf in ((proc.stdout, out), (proc.stderr, err)):
        os.set_blocking(pipe.fileno(), False)
        sel.register(pipe, selectors.EVENT_READ, buf)
    start = time.monotonic()
    deadline, stop_reading, wall_timeout, killed = start + timeout_s, None, False, False
    while True:
        now = time.monotonic()
        exited = _exited(proc.pid)
        if not killed and (exited or now >= deadline):
            wall_timeout = not exited
            _kill_group(proc.pid, sweep)
            killed, stop_reading = True, now + 2  # pipes a stray process still holds get 2 s, then we go
        if killed and not sel.get_map() or stop_reading is not None and now >= stop_reading:
            break
        if not sel.get_map():  # the program closed its output but runs on
            time.sleep(0.02)
        for key, _ in sel.select(timeout=0.05) if sel.get_map() else ():
            try:
                chunk = os.read(key.fileobj.fileno(), 1 << 16)
            except BlockingIOError:
                continue
            if chunk:
                key.data.add(chunk)
            else:
                sel.unregister(key.fileobj)
    sel.close()
    proc.stdout.close()
    proc.stderr.close()
    proc.wait()
    return out, err, wall_timeout


def _exited(pid: int) -> bool:
    # WNOWAIT: look without reaping, so the process group id stays ours until we have killed the group.
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_group(pgid: int, sweep) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if sweep and sweep[0] is not None:
        # No PID namespace: a child that called setsid() left the group. The uid is this call's alone,
        # so kill(-1) run as that uid reaches exactly the program's processes, wherever they went.
        uid, python = sweep
        try:
            subprocess.run([python, "-I", "-S", "-c", "import os, signal; os.kill(-1, signal.SIGKILL)"],
                           user=uid, group=uid, extra_groups=[], env={"PATH": _PATH}, timeout=10,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
        except (OSError, subprocess.SubprocessError):
            pass


def _read_status(fd: int) -> dict:
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 4096):
            data += chunk
    except BlockingIOError:
        pass
    status = {}
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            status.update(json.loads(line))
        except ValueError:
            pass
    return status


def _result(proc_rc: int, status: dict, out: _Capped, err: _Capped, wall_timeout: bool) -> SandboxResult:
    stderr = err.text()
    if status.get("error"):  # the sandbox could not start the program: not the program's fault
        return _failed(status["error"], out.text(), stderr)
    rc = status.get("returncode", proc_rc)
    tail = stderr[-2048:]
    failed = rc != 0
    memory = failed and bool(re.search(r"(^|\n)MemoryError\b|Cannot allocate memory", tail))
    reason = None
    if wall_timeout or status.get("alarm"):
        reason = "wall_timeout"
    elif rc == -signal.SIGXCPU:
        reason = "cpu_time"
    elif memory:
        reason = "memory"
    elif rc == -signal.SIGXFSZ or failed and re.search(r"(^|\n)OSError: \[Errno 27\]", tail):
        reason = "file_size"
    elif rc is not None and rc < 0:
        reason = f"signal:{signal.Signals(-rc).name}" if -rc in signal.valid_signals() else f"signal:{-rc}"
    timed_out = reason in ("wall_timeout", "cpu_time")
    return SandboxResult(ok=rc == 0 and reason is None, returncode=rc, stdout=out.text(), stderr=stderr,
                         timed_out=timed_out, memory_exceeded=memory and not timed_out, killed_reason=reason,
                         output_truncated=out.truncated or err.truncated)


def _failed(message: str, stdout: str = "", stderr: str = "") -> SandboxResult:
    return SandboxResult(ok=False, returncode=None, stdout=stdout, stderr=f"{stderr}sandbox: {message}\n",
                         killed_reason="sandbox_error")


def _base_python() -> str:
    # The base interpreter, not the venv's: the program runs with -I -S and sees only the standard library.
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _prefix_of(python: str) -> str:
    return os.path.dirname(os.path.dirname(os.path.realpath(python)))


def _interpreter(for_uid: int | None) -> str | None:
    """The interpreter to run; without a mount namespace, one that a uid in no group can execute.

    (Inside the mount namespace the interpreter's prefix is bound into view, so /root/.pyenv works.)
    """
    base = _base_python()
    if for_uid is None:
        return base
    for candidate in (base, "/usr/local/bin/python3", "/usr/bin/python3"):
        real = os.path.realpath(candidate)
        if os.path.isfile(real) and _world_can(real, stat.S_IROTH | stat.S_IXOTH) and \
                _world_can(os.path.join(_prefix_of(real), "lib"), stat.S_IROTH | stat.S_IXOTH):
            return real
    return None


def _world_can(path: str, bits: int) -> bool:
    """Whether a user in no group may reach `path` (every parent searchable) and has `bits` on it."""
    try:
        parts = path.rstrip("/").split("/")
        for i in range(2, len(parts)):
            if not os.stat("/".join(parts[:i])).st_mode & stat.S_IXOTH:
                return False
        return os.stat(path).st_mode & bits == bits
    except OSError:
        return False


def _count_procs(uid: int) -> int:
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                n += any(line.startswith("Uid:") and line.split()[1] == str(uid) for line in f)
        except OSError:
            pass
    return n


def _rmtree(path: str) -> None:
    def unlock(func, p, _exc):  # a program may have chmod-ed a directory shut (it matters when not root)
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=unlock)


# ---- the inner side: this file run as a script, as root inside the namespaces --------------------

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC = 32, 4096, 16384
_MS_NOATIME, _MS_NODIRATIME, _MS_RELATIME, _MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
_KEEP_FLAGS = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC, "noatime": _MS_NOATIME,
               "nodiratime": _MS_NODIRATIME, "relatime": _MS_RELATIME, "strictatime": _MS_STRICTATIME}
_PR_SET_NO_NEW_PRIVS = 38


def _inner(cfg: dict) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    status_fd = cfg["status_fd"]
    os.set_inheritable(status_fd, False)  # the program must not hold it

    def report(**kw) -> None:
        os.write(status_fd, (json.dumps(kw) + "\n").encode())

    if cfg["mount"]:
        try:
            _setup_mounts(libc, cfg)
        except OSError as e:
            report(error=f"mount setup failed: {e}")
            sys.exit(1)

    err_r, err_w = os.pipe()  # close-on-exec: EOF means the exec worked
    child = os.fork()
    if child == 0:
        try:
            os.close(err_r)
            _limit_and_exec(libc, cfg)
        except BaseException as e:  # noqa: BLE001 -- anything here is the sandbox's failure, reported
            os.write(err_w, f"{type(e).__name__}: {e}".encode())
        os._exit(127)
    os.close(err_w)

    alarm = []

    def on_alarm(*_):  # a second line behind the parent's timeout, in case the parent itself is gone
        alarm.append(True)
        os.kill(child, signal.SIGKILL)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, cfg["timeout_s"] + 2)
    exec_error = os.read(err_r, 4096).decode("utf-8", "replace")
    while True:  # as PID 1 we also reap the orphans the program leaves
        pid, wstatus = os.wait()
        if pid == child:
            break
    if exec_error:
        report(error=f"could not start the program: {exec_error}")
    else:
        report(returncode=os.waitstatus_to_exitcode(wstatus), alarm=bool(alarm))
    sys.exit(0)  # as PID 1, exiting kills every process the program left in the namespace


def _limit_and_exec(libc, cfg: dict) -> None:
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these, and exec would pass that on
        signal.signal(sig, signal.SIG_DFL)
    for name, (soft, hard) in cfg["limits"].items():
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (soft, hard))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:  # setuid binaries can't give privileges back
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    os.umask(0o022)
    os.chdir(cfg["workdir"])
    python = cfg["python"]
    os.execve(python, [python, "-I", "-S", "-B", "-u", "main.py"], cfg["env"])


def _mount(libc, source, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or ''} on {target}: {os.strerror(err)}")


def _setup_mounts(libc, cfg: dict) -> None:
    """Hide private and shared-writable directories, give the program a tmpfs workdir, make the rest read-only."""
    workdir = cfg["workdir"]
    files = {}
    for name in os.listdir(workdir):
        with open(os.path.join(workdir, name), "rb") as f:
            files[name] = f.read()
    # The interpreter may live under a directory we hide (/root/.pyenv): hold it by an fd, bind it back.
    keep = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in cfg["keep"]}
    for d in cfg["hide"]:
        _mount(libc, "tmpfs", d, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=755")
    for path, fd in keep.items():
        if any(path == d or path.startswith(d.rstrip("/") + "/") for d in cfg["hide"]):
            os.makedirs(path, exist_ok=True)
            _mount(libc, f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
        os.close(fd)
    os.makedirs(workdir, exist_ok=True)
    owner = "" if cfg["uid"] is None else f",uid={cfg['uid']},gid={cfg['uid']}"
    _mount(libc, "tmpfs", workdir, "tmpfs", _MS_NOSUID | _MS_NODEV,
           f"size={cfg['tmpfs_mb']}m,nr_inodes=8192,mode=700{owner}")  # bounded bytes and files
    for name, data in files.items():
        with open(os.path.join(workdir, name), "wb") as f:
            f.write(data)
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
        if target == workdir or target.startswith(workdir + "/"):
            continue
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
        for opt in fields[5].split(","):
            flags |= _KEEP_FLAGS.get(opt, 0)
        try:
            _mount(libc, None, target, None, flags)
        except OSError:
            pass  # a mount we may not touch (locked in a user namespace, or covered): the uid still guards it


if __name__ == "__main__":
    _inner(json.loads(sys.argv[1]))
