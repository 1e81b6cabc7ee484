"""The provider's WebSocket writes the frames of one loop iteration together, in order,
and never holds back a frame that is not a small text frame (a close, a ping)."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy_router.morrpc.coalesce import CoalescingTransport


class Recording:
    """A transport that records each write call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[bytes]]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", [bytes(data)]))

    def writelines(self, lines: Any) -> None:
        self.calls.append(("writelines", [bytes(x) for x in lines]))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0


def text(payload: bytes) -> bytes:
    return bytes([0x81, len(payload)]) + payload


async def test_the_frames_of_one_iteration_leave_in_one_call_in_order() -> None:
    real = Recording()
    transport = CoalescingTransport(real)
    for i in range(5):
        transport.write(text(b"chunk %d" % i))
    assert real.calls == [], "nothing is written before the iteration ends"
    await asyncio.sleep(0)
    assert real.calls == [("writelines", [text(b"chunk %d" % i) for i in range(5)])]


async def test_a_close_or_a_ping_is_written_at_once_behind_what_was_queued() -> None:
    real = Recording()
    transport = CoalescingTransport(real)
    transport.write(text(b"last chunk"))
    close = bytes([0x88, 2]) + b"\x03\xe8"
    transport.write(close)
    assert real.calls == [("writelines", [text(b"last chunk")]), ("write", [close])]


async def test_a_large_frame_in_two_writes_keeps_its_order() -> None:
    real = Recording()
    transport = CoalescingTransport(real)
    transport.write(text(b"small"))
    header = bytes([0x81, 127]) + (70_000).to_bytes(8, "big")
    transport.write(header)
    transport.write(b"x" * 70_000)
    assert [kind for kind, _ in real.calls] == ["writelines", "write", "write"]
    assert real.calls[1][1] == [header]


async def test_nothing_is_written_to_a_closing_transport_and_the_rest_is_the_real_one() -> None:
    real = Recording()
    transport = CoalescingTransport(real)
    transport.write(text(b"late"))
    real.closing = True
    await asyncio.sleep(0)
    assert real.calls == []
    assert transport.get_write_buffer_size() == 0 and transport.is_closing()
