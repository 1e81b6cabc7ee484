"""Child processes (``proxy_router.process``): started in their own group, waited for,
and stopped as a whole group, with the log quoted when a start fails."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from proxy_router.ports import free_port, port_open
from proxy_router.process import (
    NotReady,
    ProcessExited,
    is_alive,
    spawn,
    stop_process_group,
    wait_until,
    wait_until_async,
)

PY = sys.executable


def python(code: str) -> list[str]:
    return [PY, "-c", code]


def serve_forever(port: int) -> str:
    return ("import socket, time\n"
            f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\n"
            "print('listening', flush=True)\n"
            "time.sleep(600)\n")


def test_spawn_waits_until_ready_and_stop_ends_it(tmp_path: Path):
    port = free_port()
    proc = spawn(python(serve_forever(port)), name="server", log_path=tmp_path / "s.log",
                 ready=lambda: port_open(port), timeout=20)
    try:
        assert proc.running and port_open(port)
        assert "listening" in proc.log_tail()
    finally:
        code = proc.stop(timeout=5)
    assert not proc.running and code is not None
    assert not port_open(port)


def test_a_child_that_exits_early_is_reported_with_its_log(tmp_path: Path):
    with pytest.raises(ProcessExited, match=r"(?s)broken exited with code 3.*no config here"):
        spawn(python("import sys; print('no config here', flush=True); sys.exit(3)"),
              name="broken", log_path=tmp_path / "b.log", ready=lambda: False, timeout=20)


def test_a_child_never_ready_is_stopped_and_reported(tmp_path: Path):
    started = []

    def never() -> bool:
        started.append(True)
        return False

    with pytest.raises(NotReady, match=r"slow not ready after 0\.5 s") as info:
        spawn(python("import time; time.sleep(600)"), name="slow",
              log_path=tmp_path / "slow.log", ready=never, timeout=0.5, interval=0.05)
    assert isinstance(info.value, TimeoutError) and started


def test_stop_reaches_grandchildren_and_kills_what_ignores_sigterm(tmp_path: Path):
    pid_file = tmp_path / "grandchild.pid"
    code = ("import signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "g = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(g.pid))\n"
            "time.sleep(600)\n")
    proc = spawn(python(code), name="stubborn", ready=pid_file.exists, timeout=20)
    grandchild = int(pid_file.read_text())
    proc.stop(timeout=0.5)
    assert not proc.running
    wait_until(lambda: not is_alive(grandchild) or _zombie(grandchild), 10, "grandchild gone")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_a_group_is_stopped_from_its_pid_alone(tmp_path: Path):
    port = free_port()
    proc = spawn(python(serve_forever(port)), ready=lambda: port_open(port), timeout=20)
    stop_process_group(proc.pid, timeout=5)  # as `devnet.py down` does from state.json
    assert not proc.running
    stop_process_group(proc.pid, timeout=1)  # a second stop of a gone group is harmless


async def test_the_async_wait_polls_without_blocking_the_loop():
    calls = []

    async def ready() -> bool:
        calls.append(time.monotonic())
        return len(calls) >= 3

    await wait_until_async(ready, 10, "three polls", interval=0.01)
    assert len(calls) == 3
    with pytest.raises(NotReady, match="nothing not ready"):
        async def no() -> bool:
            return False
        await wait_until_async(no, 0.05, "nothing", interval=0.01)
