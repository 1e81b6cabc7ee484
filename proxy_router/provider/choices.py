"""Several choices (``n > 1``) of one request, served by running it once per choice.

Model servers such as llama-cpp-python ignore ``n`` and answer one choice, so the
provider sends the request ``n`` times (``n`` removed) and merges the answers into the
one OpenAI gives: a stream's events as they arrive, each choice's ``index`` (and the
chunk ``id``) made the request's; a whole reply's choices in order; one usage with the
prompt counted once (OpenAI's convention for ``n``) and the completions summed.

The generations share what the model has free: the prompt's own slot plus the slots
free at that moment while nobody waits (``CapacityManager.extra_slots``: a queued
prompt is never overtaken, and nothing more is waited for). Each slot runs one
generation at a time, so the backend never has more of this request than slots held;
the generations beyond run in turn. One generation failing fails the request (the
others are stopped first); a request stopped stops every generation and frees every
slot in its own unwinding, before any other task runs, as a single generation does.

A client's ``seed`` is varied per choice (``seed ^ i``, choice 0 keeps it): one seed
for every generation would give ``n`` copies of one answer, where OpenAI gives ``n``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from proxy_router.provider.capacity import ExtraSlots
from proxy_router.provider.sse_decoder import parse_event
from proxy_router.provider.usage import MeterSum, UsageMeter

MAX_CHOICES = 16
"""Most choices one request may ask for (OpenAI allows 128): each is a whole generation
on a slot of the model."""
_MAX_BATCH_BYTES = 64 * 1024  # as the backend batches: far below a frame's 8 MiB
_QUEUED_PER_SLOT = 4  # items a generation may read ahead of the client

Item = list[bytes] | dict[str, Any]
"""A generation's items, and the merge's: ``service.PromptItem``."""
Generate = Callable[[dict[str, Any], UsageMeter], AsyncGenerator[Item, None]]
"""One generation of a body, measured by its meter, failures as ``RpcError``
(``ProviderService._generate``)."""
Count = Callable[[dict[str, Any], UsageMeter], Awaitable[None]]
"""The counts a generation's usage lacked, asked of the backend (``_count_missing``)."""

_ENDED = object()
_STOPPING: set[asyncio.Task[None]] = set()
"""Generations cancelled and not yet unwound: held so that none is collected mid-way."""


async def serve_choices(body: dict[str, Any], meter: MeterSum, slots: ExtraSlots,
                        generate: Generate, count: Count) -> AsyncGenerator[Item, None]:
    """The ``body["n"]`` answers of ``body`` as one: stream batches as they come, or one
    whole reply. ``slots`` (not yet taken) are the model's free slots beside the
    prompt's own; ``meter`` measures every generation."""
    n = body["n"]
    with slots:
        run = _Generations(body, n, meter, generate, count, workers=1 + slots.held)
        try:
            merged = _streamed(run, _StreamMerge()) if body.get("stream", True) \
                else _whole(run)
            async with contextlib.aclosing(merged) as items:
                async for item in items:
                    yield item
        except (asyncio.CancelledError, GeneratorExit):
            run.stop()  # no await: the slots are freed by this unwinding, now
            raise
        except BaseException:
            run.stop()
            await run.wait()  # every backend request closed before the error goes out
            raise


class _Generations:
    """The ``n`` generations of one body on ``workers`` slots, feeding one queue of
    ``(index, item)`` in the order items arrive."""

    def __init__(self, body: dict[str, Any], n: int, meter: MeterSum, generate: Generate,
                 count: Count, *, workers: int) -> None:
        self.n = n
        self._bodies = [_generation(body, i) for i in range(n)]
        self._meter = meter
        self._generate = generate
        self._count = count
        self._pending = deque(range(n))
        self._ended = 0
        workers = min(workers, n)
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(_QUEUED_PER_SLOT * workers)
        self._tasks = [asyncio.create_task(self._work()) for _ in range(workers)]

    async def _work(self) -> None:
        """Generations in turn on one slot, until none is left."""
        queue = self._queue
        while self._pending:
            i = self._pending.popleft()
            meter = self._meter.start(i)
            body = self._bodies[i]
            try:
                async with contextlib.aclosing(self._generate(body, meter)) as items:
                    async for item in items:
                        await queue.put((i, item))
                await self._count(body, meter)
            except Exception as exc:  # the merge raises it, and stops the others
                await queue.put((i, exc))
                return
            await queue.put((i, _ENDED))

    async def next(self) -> tuple[int, Item] | None:
        """The next item of any generation; None once every one has ended."""
        while self._ended < self.n:
            entry = self._take(await self._queue.get())
            if entry is not None:
                return entry
        return None

    def ready(self) -> tuple[int, Item] | None:
        """The next item already queued, if any (an end is taken in passing)."""
        while not self._queue.empty():
            entry = self._take(self._queue.get_nowait())
            if entry is not None:
                return entry
        return None

    def _take(self, entry: tuple[int, Any]) -> tuple[int, Item] | None:
        got = entry[1]
        if got is _ENDED:
            self._ended += 1
            return None
        if isinstance(got, BaseException):
            raise got
        return entry

    def stop(self) -> None:
        """Cancel the generations still running: each closes its backend request as it
        unwinds (a read of the backend is what each waits on)."""
        for task in self._tasks:
            if not task.done():
                task.cancel()
                _STOPPING.add(task)
                task.add_done_callback(_STOPPING.discard)

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _generation(body: dict[str, Any], i: int) -> dict[str, Any]:
    """The body of generation ``i``: no ``n``, and a seed of its own if one was given."""
    out = {k: v for k, v in body.items() if k != "n"}
    seed = out.get("seed")
    if i and isinstance(seed, int) and not isinstance(seed, bool):
        out["seed"] = seed ^ i
    return out


# -- a stream ---------------------------------------------------------------------------


async def _streamed(run: _Generations, merge: _StreamMerge
                    ) -> AsyncGenerator[list[bytes], None]:
    """Every generation's events as they come, rewritten; what is queued at once goes in
    one batch (the openings of several choices reach a client together); then one usage
    event for all."""
    while (entry := await run.next()) is not None:
        out = merge.batch(*entry)
        size = sum(map(len, out))
        while size < _MAX_BATCH_BYTES and (entry := run.ready()) is not None:
            more = merge.batch(*entry)
            out += more
            size += sum(map(len, more))
        if out:
            yield out
    usage = merge.usage_event(run.n)
    if usage is not None:
        yield [usage]


class _StreamMerge:
    """Rewrites generation ``i``'s events into the request's stream: ``choices[].index``
    is ``i``, the ``id`` the first event's; usage events are kept back, summed at the end.

    A token chunk (compact JSON, one ``"index":0``) is rewritten by byte replacement;
    the few others (a generation's first, usage, tool calls, spaced JSON) are parsed."""

    __slots__ = ("_head", "_ids", "_indexes", "_usage")

    def __init__(self) -> None:
        self._head: dict[str, Any] | None = None
        """``id``, ``object``, ``created``, ``model`` of the stream's first event."""
        self._ids: dict[int, tuple[bytes, bytes]] = {}
        """Per generation: its own ``"id":"…"`` bytes, and the stream's."""
        self._usage: dict[int, dict[str, Any]] = {}
        self._indexes: dict[int, bytes] = {}

    def batch(self, i: int, item: Item) -> list[bytes]:
        if not isinstance(item, list):
            raise TypeError("a streamed generation yielded a whole reply")
        out = []
        for payload in item:
            rewritten = self._rewrite(i, payload)
            if rewritten is not None:
                out.append(rewritten)
        return out

    def _rewrite(self, i: int, payload: bytes) -> bytes | None:
        ids = self._ids.get(i)
        if (ids is not None and b'"usage"' not in payload and b'": ' not in payload
                and payload.count(b'"index":') == 1 and b'"index":0' in payload):
            if i:
                index = self._indexes.get(i) or self._indexes.setdefault(i, b'"index":%d' % i)
                payload = payload.replace(b'"index":0', index, 1)
            own, common = ids
            return payload if own == common else payload.replace(own, common, 1)
        return self._parsed(i, parse_event(payload))

    def _parsed(self, i: int, event: dict[str, Any]) -> bytes | None:
        if self._head is None:
            self._head = {k: event[k] for k in ("id", "object", "created", "model")
                          if k in event}
        common = self._head.get("id")
        if i not in self._ids:
            self._ids[i] = (_id_bytes(event.get("id")), _id_bytes(common))
        usage = event.get("usage")
        if isinstance(usage, dict):
            self._usage[i] = usage
            if not event.get("choices"):
                return None
            del event["usage"]  # in the sum at the end
        for choice in event.get("choices") or ():
            if isinstance(choice, dict):
                choice["index"] = i
        if common is not None:
            event["id"] = common
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()

    def usage_event(self, n: int) -> bytes | None:
        """One usage event for the ``n`` generations, when every one reported its own."""
        usage = _summed([self._usage.get(i) for i in range(n)])
        if usage is None or self._head is None:
            return None
        event = {**self._head, "choices": [], "usage": usage}
        return json.dumps(event, separators=(",", ":")).encode()


def _id_bytes(value: Any) -> bytes:
    return b'"id":' + json.dumps(value).encode()


def _summed(usages: list[Any]) -> dict[str, int] | None:
    """OpenAI's usage of ``n`` choices: generation 0's prompt once, completions summed;
    None unless each generation gave its counts."""
    if not usages or not all(isinstance(u, dict) and _counts(u) for u in usages):
        return None
    prompt = usages[0]["prompt_tokens"]
    completion = sum(u["completion_tokens"] for u in usages)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _counts(usage: dict[str, Any]) -> bool:
    return all(isinstance(usage.get(k), int) and not isinstance(usage.get(k), bool)
               for k in ("prompt_tokens", "completion_tokens"))


# -- a whole reply ----------------------------------------------------------------------


async def _whole(run: _Generations) -> AsyncGenerator[dict[str, Any], None]:
    """The ``n`` replies as one: generation 0's ``id``, ``created`` and ``model``, the
    choices in generation order and indexed so, the usage summed."""
    replies: dict[int, dict[str, Any]] = {}
    while (entry := await run.next()) is not None:
        i, item = entry
        if not isinstance(item, dict):
            raise TypeError("a whole reply's generation yielded a stream")
        replies[i] = item
    yield merge_replies([replies[i] for i in sorted(replies)])


def merge_replies(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """Whole replies (``chat.completion`` or ``text_completion``) as one of all their
    choices, indexed in order."""
    choices: list[Any] = []
    for reply in replies:
        for choice in reply.get("choices") or ():
            choices.append({**choice, "index": len(choices)} if isinstance(choice, dict)
                           else choice)
    merged = {**replies[0], "choices": choices}
    usage = _summed([reply.get("usage") for reply in replies])
    if usage is None:
        merged.pop("usage", None)
    else:
        merged["usage"] = usage
    return merged
