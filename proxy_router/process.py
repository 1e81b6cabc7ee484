"""Child processes we own: spawn one in its own process group, wait until it is ready,
stop the whole group.

Written once because the provider's embedded llama.cpp server, the devnet (anvil,
routers), the test fixtures and the benchmarks all need the same three steps, and
each got the details (reaping, the SIGKILL fallback, quoting the log when a start
fails) slightly differently wrong when they were written separately.

Every child gets ``start_new_session=True``: its PID is its process-group id, so a
stop reaches anything it spawned, and a terminal's Ctrl-C does not hit it before
its owner decides the order of shutdown. ``stop_process_group`` works from the PID
alone, so another process (``scripts/devnet.py down``) can stop what ``up`` started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

LOG_TAIL_BYTES = 4000
_STOP_POLL_S = 0.1


class StartupError(RuntimeError):
    """A child did not become ready; the message names it and quotes its log tail."""


class ProcessExited(StartupError):
    """The child exited before it was ready."""


class NotReady(StartupError, TimeoutError):
    """The child kept running but was not ready in time."""


def log_tail(path: Path | None, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last ``max_bytes`` of a log file ("" when there is none), for error messages."""
    if path is None:
        return ""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def signal_group(pid: int, sig: int) -> bool:
    """Send ``sig`` to the process group ``pid`` leads; False when nobody is left in it."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a reused PID that is not ours: leave it alone
        return False
    return True


def _pid_gone(pid: int) -> bool:
    """Reap ``pid`` if it is our child; otherwise ask the kernel whether it still exists."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return bool(done)
    except ChildProcessError:  # not our child (another process started it)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def _stop_group(pid: int, timeout: float, gone: Callable[[], bool],
                reap: Callable[[], None]) -> None:
    if not signal_group(pid, signal.SIGTERM):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone():
            return
        time.sleep(_STOP_POLL_S)
    if signal_group(pid, signal.SIGKILL):
        reap()


def stop_process_group(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the group ``pid`` leads, SIGKILL it if ``pid`` is still there after ``timeout``.

    Needs only the PID, so it also stops children of another process (recorded PIDs)."""

    def reap() -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    _stop_group(pid, timeout, lambda: _pid_gone(pid), reap)


def is_alive(pid: int) -> bool:
    """Whether a process with this PID exists (and is not a zombie child of ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ManagedProcess:
    """One spawned child: its ``subprocess.Popen``, a label for messages, its log file."""

    def __init__(self, popen: subprocess.Popen[bytes], name: str,
                 log_path: Path | None) -> None:
        self.popen = popen
        self.name = name
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, max_bytes: int = LOG_TAIL_BYTES) -> str:
        return log_tail(self.log_path, max_bytes)

    def send_signal(self, sig: int) -> None:
        """Signal the whole group, unless the child is already reaped (its PID may be reused)."""
        if self.running:
            signal_group(self.pid, sig)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> int:
        """Signal the group (SIGKILL by default: a crash) and reap the child."""
        self.send_signal(sig)
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the group, SIGKILL it after ``timeout``; return the exit code."""
        if self.running:
            _stop_group(self.pid, timeout, lambda: self.popen.poll() is not None,
                        self._reap)
        return self.popen.poll()

    def _reap(self) -> None:
        self.popen.wait()

    async def stop_async(self, timeout: float = 15.0) -> int | None:
        """``stop`` off the event loop (it sleeps while the child shuts down)."""
        return await asyncio.to_thread(self.stop, timeout)

    def exited_error(self, what: str) -> ProcessExited:
        return ProcessExited(_describe(f"{what} exited with code {self.popen.returncode} "
                                       "before it was ready", self))


def _describe(message: str, process: ManagedProcess | None) -> str:
    if process is None or process.log_path is None:
        return message
    message += f" (log {process.log_path})"
    tail = process.log_tail()
    return message + (":\n" + tail if tail.strip() else "")


def spawn(cmd: Sequence[str], *, name: str | None = None, env: Mapping[str, str] | None = None,
          log_path: Path | None = None, append: bool = True, cwd: Path | None = None,
          ready: Callable[[], bool] | None = None, timeout: float = 30.0,
          interval: float = 0.2) -> ManagedProcess:
    """Start ``cmd`` in a new session, stdout and stderr to ``log_path`` (or nowhere).

    ``env`` is the child's whole environment (None: ours). With ``ready``, block until it
    returns True (polled every ``interval`` s); if the child exits first or ``timeout``
    passes, stop it and raise ``ProcessExited``/``NotReady``. ``name`` labels it in those
    messages."""
    label = name or Path(cmd[0]).name
    if log_path is None:
        popen = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                 env=None if env is None else dict(env), cwd=cwd,
                                 start_new_session=True)
    else:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab" if append else "wb") as log:  # the child keeps its own copy
            popen = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT,
                                     env=None if env is None else dict(env), cwd=cwd,
                                     start_new_session=True)
    process = ManagedProcess(popen, label, log_path)
    if ready is not None:
        try:
            wait_until(ready, timeout, label, process=process, interval=interval)
        except BaseException:
            process.stop()
            raise
    return process


def wait_until(check: Callable[[], bool], timeout: float, what: str, *,
               process: ManagedProcess | None = None, interval: float = 0.2) -> None:
    """Poll ``check`` until it returns True. Raise ``ProcessExited`` as soon as ``process``
    exits, ``NotReady`` after ``timeout`` seconds; both quote the process's log tail."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and not process.running:
            raise process.exited_error(what)
        if check():
            return
        if time.monotonic() >= deadline:
            raise NotReady(_describe(f"{what} not ready after {timeout:g} s", process))
        time.sleep(interval)


async def wait_until_async(check: Callable[[], Awaitable[bool]], timeout: float, what: str, *,
                           process: ManagedProcess | None = None,
                           interval: float = 0.25) -> None:
    """``wait_until`` for an event loop: ``check`` is awaited, the waits are ``asyncio.sleep``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if process is not None and not process.running:
            raise process.exited_error(what)
        if await check():
            return
        if loop.time() >= deadline:
            raise NotReady(_describe(f"{what} not ready after {timeout:g} s", process))
        await asyncio.sleep(interval)
