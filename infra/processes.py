"""Detached service processes for the local stack: start in a new session, record exactly what
was started (pid + start time, so a recycled pid is never mistaken for ours), probe, and stop the
whole process group (TERM, wait, KILL). Linux only: process state is read from /proc."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class ServiceError(RuntimeError):
    """A service process could not be started, probed or stopped; the message says what to do."""


@dataclass
class ProcRecord:
    """What a pidfile holds: enough to find, probe and stop exactly the process `up` started."""

    name: str
    pid: int
    """Session and process-group leader (started with setsid), so pgid == pid."""
    start_ticks: int
    """/proc/PID/stat start time: guards against a recycled pid."""
    cmd: list[str]
    log: str
    log_offset: int
    """Where this start's output begins in the (appended) log."""
    ports: dict[str, int]


# Popen objects of services this interpreter started: kept referenced so they are reaped (no
# zombies that still look alive) and never garbage-collected with a "still running" warning.
_CHILDREN: dict[int, subprocess.Popen] = {}
_EXIT_CODES: dict[int, int] = {}


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgrp, start_ticks) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and parens
    return fields[0], int(fields[2]), int(fields[19])


def reap(pid: int) -> int | None:
    """Collect a service this interpreter started if it has exited; its exit code, if known."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _EXIT_CODES[pid] = _CHILDREN.pop(pid).returncode
    return _EXIT_CODES.get(pid)


def pid_alive(rec: ProcRecord) -> bool:
    """The recorded leader still runs (not a zombie, not a recycled pid)."""
    reap(rec.pid)
    st = _stat(rec.pid)
    return st is not None and st[0] != "Z" and st[2] == rec.start_ticks


def group_members(rec: ProcRecord) -> list[int]:
    """Live processes in the recorded process group — only if that group is still ours: the leader
    is alive, a zombie, or gone entirely (a pid that is still some group's id is never reused)."""
    reap(rec.pid)
    st = _stat(rec.pid)
    if st is not None and st[2] != rec.start_ticks:
        return []  # the pid now belongs to an unrelated process: leave its group alone
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[1] == rec.pid and st[0] != "Z":
                members.append(int(entry.name))
    return members


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def spawn(name: str, cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path,
          ports: dict[str, int]) -> ProcRecord:
    """Start `cmd` detached in a new session, output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
        log.flush()
        offset = log.tell()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    _EXIT_CODES.pop(proc.pid, None)
    st = _stat(proc.pid)
    return ProcRecord(name=name, pid=proc.pid, start_ticks=st[2] if st else -1, cmd=cmd,
                      log=str(log_path), log_offset=offset, ports=ports)


def stop_group(rec: ProcRecord, timeout_s: float, leader_first: bool = False) -> None:
    """SIGTERM (the leader alone first if it shuts its children down itself), wait, then SIGKILL."""
    if leader_first and pid_alive(rec):
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, signal.SIGTERM)
        wait_until(lambda: not pid_alive(rec), timeout_s)
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        if not group_members(rec):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(rec.pid, sig)
        if wait_until(lambda: not group_members(rec), wait_s):
            return
    raise ServiceError(f"{rec.name}: processes {group_members(rec)} survived SIGKILL")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_tail(rec: ProcRecord, lines: int = 25) -> str:
    try:
        with open(rec.log, "rb") as f:
            f.seek(max(rec.log_offset, f.seek(0, os.SEEK_END) - 65536))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    tail = _ANSI.sub("", text).rstrip().splitlines()[-lines:]
    return "\n".join("    " + line for line in tail) or "    (empty)"


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> str | None:
    """'name (pid N)' of the process listening on `port`, best effort from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # 0A: LISTEN
                    inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                if os.readlink(fd.path) in inodes:
                    name = Path(f"/proc/{entry.name}/comm").read_text().strip()
                    return f"{name} (pid {entry.name})"
    return None


def http_ok(url: str, expect: Callable[[int, bytes], bool]) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return expect(resp.status, resp.read(256))
    except urllib.error.HTTPError as e:
        return expect(e.code, b"")
    except (OSError, ValueError):
        return False


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
