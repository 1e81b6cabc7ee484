"""ProviderService without a chain: its checks on market records, its wire chunks, and a
chain that fails mid-request (``CHAIN_UNAVAILABLE``, never ``INTERNAL``).

The market and index are in-memory fakes holding ``chain.types`` records; the backend is
the MOCK OpenAI server. The devnet tests (tests/integration) run the same paths for real.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest

from proxy_router.chain.errors import ChainUnavailable
from proxy_router.chain.events import REORG, MarketEvent
from proxy_router.chain.marketplace import Marketplace
from proxy_router.chain.types import Bid, Session
from proxy_router.dev.mock_openai import MockOpenAIServer
from proxy_router.metrics import Metrics
from proxy_router.morrpc import (
    CipherCache,
    ErrorCode,
    RequestContext,
    Role,
    RpcError,
    SessionKey,
    Signer,
)
from proxy_router.morrpc.protocol import SSE_FORMAT, payload_aad
from proxy_router.provider.backend import OpenAIBackend
from proxy_router.provider.models_config import ModelsConfig
from proxy_router.provider.service import ProviderService, _generate
from proxy_router.provider.usage import UsageMeter

PROVIDER = Signer.from_key("0x" + "11" * 32)
USER = Signer.from_key("0x" + "22" * 32)
STRANGER = Signer.from_key("0x" + "33" * 32)
MODEL = "0x" + "aa" * 32
BID = "0x" + "b1" * 32
SESSION = "0x" + "5e" * 32
PRICE = 10**12
MESSAGES = [{"role": "user", "content": "hello there"}]


def now() -> int:
    return int(time.time())


def a_bid(**kw: Any) -> Bid:
    fields: dict[str, Any] = {"id": BID, "provider": PROVIDER.address, "model_id": MODEL,
                              "price_per_second": PRICE, "created_at": now() - 60}
    return Bid(**{**fields, **kw})


def a_session(**kw: Any) -> Session:
    fields: dict[str, Any] = {"id": SESSION, "user": USER.address, "provider": PROVIDER.address,
                              "bid_id": BID, "model_id": MODEL, "stake": 600 * PRICE,
                              "price_per_second": PRICE, "opened_at": now() - 10,
                              "ends_at": now() + 600}
    return Session(**{**fields, **kw})


class FakeMarket:
    """The chain reads the service makes; any named in ``down`` fail as an outage does."""

    def __init__(self) -> None:
        self.bids: dict[str, Bid] = {}
        self.sessions: dict[str, Session] = {}
        self.down: set[str] = set()
        self.reads: list[str] = []
        self.settled: list[tuple[str, str]] = []
        self.client = SimpleNamespace(chain_id=31337, w3=SimpleNamespace(eth=self))

    async def _read(self, name: str) -> None:
        self.reads.append(name)
        if name in self.down:
            raise ChainUnavailable("no RPC endpoint answered: http://rpc.example/v2/SECRET")

    async def get_bid(self, bid_id: str) -> Bid:
        await self._read("get_bid")
        return self.bids.get(bid_id, Bid(id=bid_id))

    async def get_session(self, session_id: str) -> Session:
        await self._read("get_session")
        return self.sessions.get(session_id, Session(id=session_id))

    approval_key = Marketplace.approval_key  # the derivation itself, not a fake

    async def approval_used(self, key: str) -> bool:
        return (await self.get_session(key)).exists

    async def mor_balance(self, _: str) -> int:
        await self._read("mor_balance")
        return 10**24

    async def eth_balance(self, _: str) -> int:
        await self._read("eth_balance")
        return 10**20

    async def close_session(self, receipt: bytes, signature: bytes) -> Any:
        await self._read("close_session")
        self.settled.append(("close", "0x" + receipt[:32].hex()))
        return SimpleNamespace(tx_hash="0x01", event=lambda _: {"providerEarned": 1})

    async def claim_for_provider(self, session_id: str) -> Any:
        await self._read("claim_for_provider")
        self.settled.append(("claim", session_id))
        return SimpleNamespace(tx_hash="0x02", event=lambda _: {"amount": 1})

    @property
    def gas_price(self) -> Any:  # web3's ``w3.eth.gas_price``: an awaitable
        async def read() -> int:
            await self._read("gas_price")
            return 10**9
        return read()


@dataclass
class FakeIndex:
    sessions: dict[str, Session] = field(default_factory=dict)
    bids: dict[str, Bid] = field(default_factory=dict)
    listeners: list[Any] = field(default_factory=list)
    clock_offset: int = 0

    def subscribe(self, listener: Any) -> None:
        self.listeners.append(listener)

    def chain_now(self) -> int:
        return now() + self.clock_offset


class FakeStore:
    def __init__(self) -> None:
        self.recorded: list[tuple[Any, ...]] = []

    async def record_usage(self, *args: Any) -> None:
        self.recorded.append(args)

    async def usage(self, _: str) -> dict[str, int]:
        return dict.fromkeys(("prompts", "prompt_tokens", "completion_tokens", "ttft_ms_sum",
                              "tps_x1000_sum"), 0)


@dataclass
class Provider:
    service: ProviderService
    market: FakeMarket
    index: FakeIndex
    store: FakeStore


@pytest.fixture
async def provider(mock_openai: MockOpenAIServer, http: aiohttp.ClientSession
                   ) -> AsyncIterator[Provider]:
    market, index, store = FakeMarket(), FakeIndex(), FakeStore()
    models = ModelsConfig.model_validate({"models": [
        {"modelId": MODEL, "modelName": "served", "apiUrl": mock_openai.base_url,
         "concurrentSlots": 2}]})
    service = ProviderService(
        account=PROVIDER.account, market=cast(Any, market), index=cast(Any, index),
        models=models, backend_urls={MODEL: mock_openai.base_url}, store=cast(Any, store),
        http=http, metrics=Metrics("provider"), approvals_per_user=1)
    yield Provider(service, market, index, store)


def context(signer: Signer, params: dict[str, Any], *, request_id: int = 1) -> RequestContext:
    return RequestContext(request_id=request_id, method="test", sender=signer.address,
                          sender_public_key=signer.public_key, nonce="0x" + os.urandom(16).hex(),
                          timestamp=now(), params=params, remote="127.0.0.1", signer=PROVIDER,
                          cipher_cache=CipherCache())


def prompt_context(body: dict[str, Any], **params: Any) -> RequestContext:
    """A ``session.prompt`` from USER with ``body`` sealed to the provider, as a consumer does."""
    key = SessionKey.generate()
    ctx = context(USER, {"sessionId": SESSION, "key": key.public_key_hex, **params})
    cipher = CipherCache().get(key, PROVIDER.public_key, Role.CONSUMER)
    sealed = cipher.seal(json.dumps(body).encode(), payload_aad(ctx.request_id, ctx.nonce))
    ctx.params["payload"] = base64.b64encode(sealed).decode()
    return ctx


async def prompt(p: Provider, ctx: RequestContext) -> list[bytes | dict[str, Any]]:
    return [chunk async for chunk in p.service.session_prompt(ctx.params, ctx)]


async def request(p: Provider, signer: Signer = USER) -> dict[str, Any]:
    ctx = context(signer, {"bidId": BID})
    return await p.service.session_request(ctx.params, ctx)


async def refused(coro: Any) -> str:
    with pytest.raises(RpcError) as err:
        await coro
    return str(err.value.code)


# -- session.request ------------------------------------------------------------------------


async def test_an_approval_is_signed_for_an_active_bid_of_ours(provider: Provider) -> None:
    provider.market.bids[BID] = a_bid()
    reply = await request(provider)
    assert (reply["bidId"], reply["modelId"]) == (BID, MODEL)
    assert reply["pricePerSecond"] == str(PRICE) and reply["approvalSig"].startswith("0x")
    assert provider.service.approvals.outstanding(USER.address) == 1


async def test_an_indexed_bid_is_not_read_from_the_chain(provider: Provider) -> None:
    provider.index.bids[BID] = a_bid()
    await request(provider)
    assert "get_bid" not in provider.market.reads


@pytest.mark.parametrize(("bid", "code"), [
    (Bid(id=BID), ErrorCode.BID_NOT_FOUND),
    (a_bid(deleted_at=1), ErrorCode.BID_NOT_FOUND),
    (a_bid(provider=STRANGER.address), ErrorCode.WRONG_PROVIDER),
    (a_bid(model_id="0x" + "cc" * 32), ErrorCode.MODEL_NOT_SERVED),
], ids=["unknown", "deleted", "another-provider", "model-not-served"])
async def test_a_bid_we_cannot_serve_gets_no_approval(provider: Provider, bid: Bid,
                                                      code: ErrorCode) -> None:
    provider.market.bids[BID] = bid
    assert await refused(request(provider)) == code
    assert len(provider.service.approvals) == 0


async def test_a_provider_cannot_ask_itself_for_an_approval(provider: Provider) -> None:
    assert await refused(request(provider, PROVIDER)) == ErrorCode.BAD_REQUEST


# -- a chain outage mid-request -------------------------------------------------------------


@pytest.mark.parametrize("read", ["get_bid", "mor_balance", "eth_balance", "gas_price"])
async def test_a_chain_outage_during_session_request_is_chain_unavailable(
        provider: Provider, read: str) -> None:
    provider.market.bids[BID] = a_bid()
    provider.market.down.add(read)
    with pytest.raises(RpcError) as err:
        await request(provider)
    assert err.value.code == ErrorCode.CHAIN_UNAVAILABLE
    assert "SECRET" not in err.value.message and "rpc.example" not in err.value.message
    assert read in provider.market.reads


async def test_a_chain_outage_while_checking_used_approvals_is_chain_unavailable(
        provider: Provider) -> None:
    provider.market.bids[BID] = a_bid()
    await request(provider)  # the user now holds its one approval: the next asks the chain
    provider.market.down.add("get_session")
    assert await refused(request(provider)) == ErrorCode.CHAIN_UNAVAILABLE


async def test_a_chain_outage_during_session_prompt_is_chain_unavailable(
        provider: Provider) -> None:
    provider.market.down.add("get_session")
    ctx = prompt_context({"messages": MESSAGES})
    assert await refused(prompt(provider, ctx)) == ErrorCode.CHAIN_UNAVAILABLE


async def test_a_chain_outage_during_session_report_is_chain_unavailable(
        provider: Provider) -> None:
    provider.market.down.add("get_session")
    ctx = context(USER, {"sessionId": SESSION})
    assert await refused(provider.service.session_report(ctx.params, ctx)) \
        == ErrorCode.CHAIN_UNAVAILABLE


# -- session.prompt -------------------------------------------------------------------------


async def test_a_prompt_streams_sse_chunks_and_records_its_usage(provider: Provider) -> None:
    provider.market.sessions[SESSION] = a_session()
    ctx = prompt_context({"messages": MESSAGES, "stream": True}, format=SSE_FORMAT)
    chunks = await prompt(provider, ctx)
    assert all(isinstance(c, bytes) and c.startswith(b"data: {") for c in chunks)
    assert ctx.trailer["usage"]["completion_tokens"] == 5
    assert provider.store.recorded == [(SESSION, 2, 5, ctx.trailer["usage"]["ttft_ms"],
                                        ctx.trailer["usage"]["tps_x1000"])]
    assert provider.service.capacity.tracks(SESSION), "its first prompt takes a slot"


async def test_a_prompt_without_a_format_gets_sse_too(provider: Provider) -> None:
    provider.market.sessions[SESSION] = a_session()
    chunks = await prompt(provider, prompt_context({"messages": MESSAGES}))
    assert chunks and all(isinstance(c, bytes) and c.endswith(b"\n\n") for c in chunks)


async def test_an_unknown_chunk_format_is_a_bad_request_before_any_chain_read(
        provider: Provider) -> None:
    ctx = prompt_context({"messages": MESSAGES}, format="json-events")
    with pytest.raises(RpcError) as err:
        await prompt(provider, ctx)
    assert err.value.code == ErrorCode.BAD_REQUEST and "params.format" in err.value.message
    assert provider.market.reads == []


@pytest.mark.parametrize(("session", "code"), [
    (Session(id=SESSION), ErrorCode.SESSION_NOT_FOUND),
    (a_session(closed=True), ErrorCode.SESSION_CLOSED),
    (a_session(provider=STRANGER.address), ErrorCode.WRONG_PROVIDER),
    (a_session(user=STRANGER.address), ErrorCode.NOT_SESSION_USER),
    (a_session(ends_at=now() - 1), ErrorCode.SESSION_EXPIRED),
], ids=["unknown", "closed", "another-provider", "another-user", "ended"])
async def test_a_prompt_on_a_session_we_cannot_serve_is_refused(
        provider: Provider, session: Session, code: ErrorCode) -> None:
    provider.market.sessions[SESSION] = session
    assert await refused(prompt(provider, prompt_context({"messages": MESSAGES}))) == code


async def test_a_session_the_index_saw_closed_is_closed_even_if_cached_open(
        provider: Provider) -> None:
    provider.market.sessions[SESSION] = a_session()
    await prompt(provider, prompt_context({"messages": MESSAGES}))
    provider.index.sessions[SESSION] = a_session(closed=True)
    assert await refused(prompt(provider, prompt_context({"messages": MESSAGES}))) \
        == ErrorCode.SESSION_CLOSED
    assert provider.market.reads == ["get_session"], "our open session was cached"


async def test_only_our_own_sessions_are_cached(provider: Provider) -> None:
    provider.market.sessions[SESSION] = a_session(provider=STRANGER.address)
    for _ in range(2):
        await refused(prompt(provider, prompt_context({"messages": MESSAGES})))
    assert provider.market.reads == ["get_session"] * 2


async def test_a_reorg_drops_the_cached_sessions_so_they_are_read_again(
        provider: Provider) -> None:
    provider.market.sessions[SESSION] = a_session()
    await prompt(provider, prompt_context({"messages": MESSAGES}))
    (listener,) = provider.index.listeners
    await listener(MarketEvent(REORG, 5))
    provider.market.sessions[SESSION] = a_session(closed=True)  # the fork's truth
    assert await refused(prompt(provider, prompt_context({"messages": MESSAGES}))) \
        == ErrorCode.SESSION_CLOSED
    assert provider.market.reads == ["get_session"] * 2


# -- the index's events ---------------------------------------------------------------------


async def test_session_events_take_and_free_a_slot(provider: Provider) -> None:
    (listener,) = provider.index.listeners
    provider.index.sessions[SESSION] = a_session()
    await listener(MarketEvent("SessionOpened", 1, provider=PROVIDER.address, user=USER.address,
                               session_id=SESSION))
    assert provider.service.capacity.tracks(SESSION)
    assert provider.service.rebuild_capacity() == 1
    await listener(MarketEvent("SessionClosed", 2, provider=PROVIDER.address,
                               session_id=SESSION))
    assert not provider.service.capacity.tracks(SESSION)


async def test_events_of_other_providers_are_ignored(provider: Provider) -> None:
    (listener,) = provider.index.listeners
    provider.index.sessions[SESSION] = a_session(provider=STRANGER.address)
    await listener(MarketEvent("SessionOpened", 1, provider=STRANGER.address,
                               session_id=SESSION))
    assert not provider.service.capacity.tracks(SESSION)
    assert provider.service.open_sessions == 0 and provider.service.rebuild_capacity() == 0


# -- settling what we are owed -------------------------------------------------------------


async def test_the_sweep_closes_our_sessions_left_open_past_the_grace_period(
        provider: Provider) -> None:
    late, early, theirs = ("0x" + c * 32 for c in ("01", "02", "03"))
    provider.index.sessions.update({
        late: a_session(id=late, ends_at=now() - 61),  # grace: 60 s
        early: a_session(id=early, ends_at=now() - 30),
        theirs: a_session(id=theirs, provider=STRANGER.address, ends_at=now() - 600)})
    await provider.service.sweep()
    assert provider.market.settled == [("close", late)]


async def test_the_sweep_claims_a_disputed_share_once_released(provider: Provider) -> None:
    released, held, claimed = ("0x" + c * 32 for c in ("01", "02", "03"))
    provider.index.sessions.update({
        released: a_session(id=released, closed=True, held=5, release_at=now() - 1),
        held: a_session(id=held, closed=True, held=5, release_at=now() + 60),
        claimed: a_session(id=claimed, closed=True, held=5, release_at=now() - 1,
                           claimed=True)})
    await provider.service.sweep()
    assert provider.market.settled == [("claim", released)]


async def test_a_failed_settlement_is_skipped_and_the_sweep_goes_on(provider: Provider) -> None:
    provider.market.down.add("close_session")
    provider.index.sessions.update({
        "0x" + "01" * 32: a_session(id="0x" + "01" * 32, ends_at=now() - 61),
        SESSION: a_session(closed=True, held=5, release_at=now() - 1)})
    await provider.service.sweep()
    assert provider.market.settled == [("claim", SESSION)]


async def test_the_sweep_forgets_cached_sessions_that_ended(provider: Provider) -> None:
    provider.market.sessions[SESSION] = a_session()
    await prompt(provider, prompt_context({"messages": MESSAGES}))  # now cached
    await provider.service.sweep()
    await prompt(provider, prompt_context({"messages": MESSAGES}))
    assert provider.market.reads == ["get_session"], "still open: still cached"
    provider.index.clock_offset = 600  # the session's end
    await provider.service.sweep()
    assert await refused(prompt(provider, prompt_context({"messages": MESSAGES}))) \
        == ErrorCode.SESSION_EXPIRED
    assert provider.market.reads == ["get_session"] * 2, "read again after the sweep"


# -- the chunks themselves ------------------------------------------------------------------


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(c["delta"].get("content") or "" for e in events for c in e["choices"]
                   if "delta" in c)


async def test_stream_chunks_are_ready_to_write_sse_holding_whole_events(
        mock_openai: MockOpenAIServer, http: aiohttp.ClientSession) -> None:
    backend = OpenAIBackend(mock_openai.base_url, model_name="served", session=http)
    meter = UsageMeter()
    chunks = [c async for c in _generate(backend, {"messages": MESSAGES, "stream": True}, meter)]
    assert all(isinstance(c, bytes) and c.endswith(b"\n\n") for c in chunks)
    raw = b"".join(cast(list[bytes], chunks))
    assert raw.startswith(b"data: {")
    events = [json.loads(e.removeprefix(b"data: ")) for e in raw.split(b"\n\n")[:-1]]
    assert text_of(events) == "tok " * 5 and events[-1]["usage"]["completion_tokens"] == 5
    assert meter.result().completion_tokens == 5 and meter.result().reported


async def test_a_non_stream_reply_is_one_json_chunk(
        mock_openai: MockOpenAIServer, http: aiohttp.ClientSession) -> None:
    backend = OpenAIBackend(mock_openai.base_url, model_name="served", session=http)
    meter = UsageMeter()
    (reply,) = [c async for c in _generate(backend, {"messages": MESSAGES, "stream": False},
                                           meter)]
    assert isinstance(reply, dict) and reply["choices"][0]["message"]["content"] == "tok " * 5
    assert meter.result().completion_tokens == 5
