"""What the benchmarks share: progress lines, per-process CPU, and the MOCK backend process.

Benches run as scripts (``python bench/NAME.py``), so their folder is on ``sys.path``
and they import this as ``harness``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from proxy_router.dev.mock_openai import spawn_mock_openai
from proxy_router.process import ManagedProcess


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_of(pid: int) -> float:
    """CPU seconds of one process, all its threads, in nanoseconds' precision.

    /proc/<pid>/task/*/schedstat (run time of each thread) rather than
    /proc/<pid>/stat utime+stime: the latter counts 10 ms ticks, too coarse for
    rounds of a few milliseconds. (A thread that exits takes its time with it; the
    routers' threads are long-lived: the SQLite worker and the executor.)
    """
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e9


class MockBackend:
    """``proxy_router.dev.mock_openai`` in its own process (its CPU is not the client's)."""

    def __init__(self, port: int, log: Path, *, tokens: int = 4,
                 token_delay: float = 0.0) -> None:
        self.port = port
        self.tokens = tokens
        self.token_delay = token_delay
        self.log = log
        self.proc: ManagedProcess | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> MockBackend:
        self.proc = spawn_mock_openai(
            self.port, ["--tokens", str(self.tokens), "--token-delay", str(self.token_delay)],
            log_path=self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            proc.stop(timeout=5)
