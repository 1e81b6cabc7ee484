"""Attacks on live routers, each held: no peer can crash, starve, bloat or read a router.

One devnet for the module: real anvil and contracts, a provider with TWO slots in
front of a MOCK backend that streams long answers (so a reader can stall it), and
the devnet's consumer. Attackers speak MOR-RPC directly with keys of their own.
After every attack the routers still answer and the MOR of every party is where
the paid sessions put it, to the wei. Tests run in file order and share the chain.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy_router.chain.encoding import Receipt, sign_blob
from proxy_router.chain.marketplace import Marketplace
from proxy_router.dev.anvil import dev_key
from proxy_router.dev.devnet import Devnet, DevnetState
from proxy_router.morrpc import E2ECipher, ErrorCode, RpcClient, RpcError, SessionKey, Signer
from proxy_router.morrpc.protocol import (
    MAX_FRAME_BYTES,
    MAX_PAYLOAD_BYTES,
    WS_PATH,
    encode_frame,
    request_frame,
)
from proxy_router.ports import free_port
from tests.integration.conftest import MockBackend, logs_of, market_for
from tests.integration.helpers import chat, error_of, eventually, request, settled

pytestmark = pytest.mark.integration

ATTACKER, PAYER, OBSERVER = 5, 6, 7  # dev accounts (3..8 hold 10,000 MOR)
BOMB = "[" * 70_000 + "]" * 70_000
DURATION = 300


@pytest.fixture(scope="module")
def backend() -> Iterator[MockBackend]:
    mock = MockBackend(free_port(), ["--tokens", "4000", "--token-delay", "0.002"]).start()
    try:
        yield mock
    finally:
        mock.stop()


@pytest.fixture(scope="module")
def net(backend: MockBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    devnet = Devnet(tmp_path_factory.mktemp("security-devnet"), progress=lambda _: None)
    try:
        devnet.up(backend_url=backend.url, concurrent_slots=2,
                  extra_router_env={"FIRST_TOKEN_TIMEOUT_S": "10",
                                    "STREAM_STALL_TIMEOUT_S": "2"})
        yield devnet
    finally:
        devnet.down()


@pytest.fixture(scope="module")
def state(net: Devnet) -> DevnetState:
    assert net.state is not None
    return net.state


# -- helpers ------------------------------------------------------------------------------


def rpc_client(state: DevnetState, key: str | None = None) -> RpcClient:
    signer = Signer.from_key(key or "0x" + os.urandom(32).hex())
    return RpcClient(state.provider_endpoint, signer, state.provider_address,
                     first_frame_timeout=20)


async def capabilities(state: DevnetState) -> dict[str, Any]:
    async with rpc_client(state, dev_key(OBSERVER)) as client:
        return await client.call("provider.capabilities", {})


async def alive(state: DevnetState) -> None:
    """Both routers answer: the provider a signed ping, the consumer its health check."""
    async with rpc_client(state) as client:
        assert (await client.ping())["protocol"] == "mor-rpc/1"
    status, _ = await request("GET", state.consumer_base + "/healthcheck")
    assert status == 200


async def raw_socket(state: DevnetState) -> tuple[aiohttp.ClientSession,
                                                  aiohttp.ClientWebSocketResponse]:
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(f"ws://{state.provider_endpoint}{WS_PATH}",
                               max_msg_size=4 * MAX_FRAME_BYTES)
    return http, ws


@dataclass
class ProtocolSession:
    session_id: str
    client: RpcClient
    key: SessionKey
    cipher: E2ECipher

    @property
    def params(self) -> dict[str, str]:
        return {"sessionId": self.session_id, "key": self.key.public_key_hex}


@asynccontextmanager
async def protocol_session(state: DevnetState, market: Marketplace,
                           key: str) -> AsyncIterator[ProtocolSession]:
    """A session opened the way a consumer does it, by hand (approval, then openSession),
    closed with the user's own receipt on exit and checked to the wei."""
    client = rpc_client(state, key)
    payer = await market_for(state, key)
    try:
        session_key = SessionKey.generate()
        reply = await client.call("session.request", {"bidId": state.bid_id,
                                                      "key": session_key.public_key_hex})
        price = int(reply["pricePerSecond"])
        await payer.ensure_allowance(price * DURATION)
        session_id, _ = await payer.open_session(price * DURATION, bytes.fromhex(
            reply["approval"][2:]), bytes.fromhex(reply["approvalSig"][2:]))
        yield ProtocolSession(session_id, client, session_key,
                              await client.cipher_for(session_key))
        await alive(state)
        receipt = Receipt(bytes.fromhex(session_id[2:]), payer.client.chain_id,
                          int(time.time())).encode()
        await payer.close_session(receipt, sign_blob(payer.client.account, receipt))
        await settled(market, session_id)
    finally:
        await client.close()
        await payer.client.close()


# -- parsing that cannot be bombed ---------------------------------------------------------


async def test_an_unauthenticated_nesting_bomb_is_a_bad_request_not_a_dead_provider(
        state: DevnetState) -> None:
    http, ws = await raw_socket(state)
    try:
        await ws.send_str(BOMB)
        reply = json.loads((await ws.receive(timeout=20)).data)
        assert reply["error"]["code"] == ErrorCode.BAD_REQUEST
        await ws.send_str('{"a":' * 50_000 + "1" + "}" * 50_000)
        reply = json.loads((await ws.receive(timeout=20)).data)
        assert reply["error"]["code"] == ErrorCode.BAD_REQUEST
        assert not ws.closed, "a malformed frame must not cost the link"
    finally:
        await ws.close()
        await http.close()
    await alive(state)


async def test_a_nesting_bomb_inside_a_sealed_prompt_fails_that_prompt_only(
        state: DevnetState, market: Marketplace) -> None:
    async with protocol_session(state, market, dev_key(PAYER)) as session:
        with pytest.raises(RpcError) as raised:
            async with session.client.stream("session.prompt", session.params,
                                             cipher=session.cipher,
                                             payload=BOMB.encode()) as stream:
                async for _ in stream:
                    pass
        assert raised.value.code == ErrorCode.BAD_REQUEST


# -- approvals cost the asker something real -----------------------------------------------


async def test_a_flood_of_throwaway_keys_gets_no_approval_holds_no_slot_and_keeps_no_state(
        state: DevnetState, market: Marketplace) -> None:
    before = await capabilities(state)
    async with rpc_client(state) as prober:
        await prober.ping()
    clients = [rpc_client(state) for _ in range(30)]
    try:
        results = await asyncio.gather(*(
            c.call("session.request", {"bidId": state.bid_id,
                                       "key": SessionKey.generate().public_key_hex})
            for c in clients), return_exceptions=True)
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    codes = {r.code if isinstance(r, RpcError) else repr(r) for r in results}
    assert codes == {ErrorCode.INSUFFICIENT_FUNDS}, codes
    after = await capabilities(state)
    # <=: an earlier test's approval may expire (or be used) meanwhile; none is added
    assert after["unusedApprovals"] <= before["unusedApprovals"], "refusals leave no state"
    assert after["models"][0]["capacity"]["sessions"] <= before["models"][0]["capacity"][
        "sessions"], "no slot is held by a refused request"
    # ...and a paying user still gets a session and an answer
    status, body = await chat(state.consumer_base, model=state.model_name, max_tokens=4)
    assert status == 200, body
    status, rows = await request("GET", state.consumer_base + "/blockchain/sessions")
    assert [r["status"] for r in rows] == ["open"], rows


async def test_one_requester_holds_at_most_the_capped_number_of_unused_approvals(
        state: DevnetState) -> None:
    async with rpc_client(state, dev_key(ATTACKER)) as client:
        granted, refused = 0, []
        for _ in range(5):
            try:
                await client.call("session.request", {
                    "bidId": state.bid_id, "key": SessionKey.generate().public_key_hex})
                granted += 1
            except RpcError as exc:
                refused.append(exc.code)
    assert granted == 3  # APPROVALS_PER_USER's default
    assert refused == [ErrorCode.TOO_MANY_APPROVALS] * 2
    await alive(state)


# -- fair slots ----------------------------------------------------------------------------


async def test_one_cheap_session_cannot_hold_every_prompt_slot_and_a_stalled_reader_is_cut(
        state: DevnetState, market: Marketplace) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}],
                       "stream": True}).encode()
    async with protocol_session(state, market, dev_key(PAYER)) as session:
        stalled = session.client.stream("session.prompt", session.params,
                                        cipher=session.cipher, payload=body)
        await stalled.__anext__()  # then never read again: no credit goes back
        with pytest.raises(RpcError) as raised:  # a second prompt on the same session
            async with session.client.stream("session.prompt", session.params,
                                             cipher=session.cipher, payload=body) as second:
                await second.__anext__()
        assert raised.value.code == ErrorCode.SESSION_BUSY

        async def freed() -> bool:
            cap = (await capabilities(state))["models"][0]["capacity"]
            return cap["promptsInFlight"] == 0
        await eventually(freed, 30, "the stalled stream was not ended")
        await stalled.aclose()


# -- per-request limits --------------------------------------------------------------------


async def test_an_oversized_prompt_is_a_413_before_sealing_and_cuts_no_other_stream(
        state: DevnetState) -> None:
    async def streamed() -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as http, http.post(
                state.consumer_url + "/chat/completions",
                json={"model": state.model_name, "stream": True, "max_tokens": 200,
                      "messages": [{"role": "user", "content": "count"}]}) as resp:
            return resp.status, await resp.read()

    healthy = asyncio.create_task(streamed())
    await asyncio.sleep(0.5)
    big = "x" * (MAX_PAYLOAD_BYTES + 1000)
    status, body = await chat(state.consumer_base, model=state.model_name,
                              messages=[{"role": "user", "content": big}])
    assert status == 413, body
    error_of(body, "request_too_large")
    status, text = await healthy
    assert status == 200 and text.rstrip().endswith(b"data: [DONE]"), text[-200:]


async def test_an_oversized_frame_fails_that_request_only_and_keeps_the_link(
        state: DevnetState) -> None:
    signer = Signer.from_key("0x" + os.urandom(32).hex())
    http, ws = await raw_socket(state)
    try:
        frame = signer.sign_frame(request_frame(7, "network.ping",
                                                {"pad": "x" * (MAX_FRAME_BYTES + 10)},
                                                signer.address))
        await ws.send_str(encode_frame(frame))
        reply = json.loads((await ws.receive(timeout=20)).data)
        assert reply["id"] == 7 and reply["error"]["code"] == ErrorCode.PAYLOAD_TOO_LARGE
        ping = signer.sign_frame(request_frame(8, "network.ping", {}, signer.address))
        await ws.send_str(encode_frame(ping))
        reply = json.loads((await ws.receive(timeout=20)).data)
        assert reply["id"] == 8 and "result" in reply
    finally:
        await ws.close()
        await http.close()


# -- restarts ------------------------------------------------------------------------------


async def test_a_restarted_provider_rebuilds_capacity_from_the_chain_and_refuses_old_frames(
        net: Devnet, state: DevnetState, market: Marketplace) -> None:
    signer = Signer.from_key(dev_key(OBSERVER))
    recorded = encode_frame(signer.sign_frame(request_frame(1, "network.ping", {},
                                                            signer.address)))
    before = (await capabilities(state))["models"][0]["capacity"]["sessions"]
    assert before >= 1, "earlier tests left the devnet consumer's session open"
    net.stop("provider")
    await asyncio.sleep(1.1)
    net.start("provider")
    await eventually(lambda: _port_open(state.provider_endpoint), 60, "provider restart")
    after = (await capabilities(state))["models"][0]["capacity"]["sessions"]
    assert after == before, "open sessions are counted again after a restart"
    http, ws = await raw_socket(state)
    try:
        await ws.send_str(recorded)
        reply = json.loads((await ws.receive(timeout=20)).data)
        assert reply["error"]["code"] == ErrorCode.STALE_MESSAGE
    finally:
        await ws.close()
        await http.close()
    assert "Traceback" not in logs_of(state, "provider")


async def _port_open(endpoint: str) -> bool:
    host, port = endpoint.rsplit(":", 1)
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        return False
    writer.close()
    return True


# -- nothing secret or internal leaves a router --------------------------------------------


async def test_backend_errors_reach_clients_without_urls_and_failover_earns_no_success(
        state: DevnetState, backend: MockBackend, market: Marketplace) -> None:
    """The devnet consumer's open session meets a dead backend: the client's error names
    no URL or path, and the session dropped by failover is closed as a dispute."""
    stats = await market.get_stats(state.provider_address, state.model_id)
    status, rows = await request("GET", state.consumer_base + "/blockchain/sessions")
    (open_id,) = [r["sessionId"] for r in rows if r["status"] == "open"]
    backend.stop()
    try:
        status, body = await chat(state.consumer_base, model=state.model_name, max_tokens=4)
        assert status in (502, 503), body
        text = json.dumps(body)
        assert state.backend_url not in text and "127.0.0.1" not in text, text
        assert "/v1/" not in text and ".py" not in text, text

        async def closed() -> bool:
            return (await market.get_session(open_id)).closed
        await eventually(closed, 30, "the failed-over session was not settled")
        dropped = await settled(market, open_id)
        assert dropped.held > 0, "closed as a dispute: the provider's share is held"
        after = await market.get_stats(state.provider_address, state.model_id)
        assert after.success_count == stats.success_count, "a failure is no success"
    finally:
        backend.start()


async def test_an_rpc_api_key_in_the_url_never_reaches_a_peer_or_the_log(
        net: Devnet, state: DevnetState) -> None:
    """A provider whose chain RPC URL carries a key in its path and query; the RPC starts
    answering HTTP 500: the peer gets CHAIN_UNAVAILABLE with a generic message, and the
    key is in no log line."""
    key = "SeCrEtKeY" + os.urandom(12).hex()
    failing = {"on": False}

    async def proxy(req: aiohttp.web.Request) -> aiohttp.web.Response:
        if failing["on"]:
            return aiohttp.web.Response(status=500, text="upstream broke")
        async with aiohttp.ClientSession() as http, http.post(
                state.rpc_url, data=await req.read(),
                headers={"Content-Type": "application/json"}) as resp:
            return aiohttp.web.Response(body=await resp.read(), status=resp.status,
                                        content_type="application/json")

    app = aiohttp.web.Application()
    app.router.add_post("/{tail:.*}", proxy)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    rpc_port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", rpc_port).start()
    port = free_port()
    env = {line.split("=", 1)[0]: line.split("=", 1)[1]
           for line in (Path(state.root) / "provider.env").read_text().splitlines() if line}
    env.update({"ETH_NODE_ADDRESS": f"http://127.0.0.1:{rpc_port}/v2/{key}?apikey={key}",
                "WALLET_PRIVATE_KEY": dev_key(8), "PROXY_ADDRESS": f"127.0.0.1:{port}",
                "PROXY_STORAGE_PATH": str(Path(state.root) / "leaky-data")})
    try:
        await asyncio.to_thread(net.spawn, "leaky", [
            *_router_command(), "--role", "provider"], env)
        await eventually(lambda: _port_open(f"127.0.0.1:{port}"), 60, "leaky provider start")
        failing["on"] = True
        signer = Signer.from_key(dev_key(OBSERVER))
        async with RpcClient(f"127.0.0.1:{port}", signer, _address(8),
                             first_frame_timeout=60) as client:
            with pytest.raises(RpcError) as raised:
                await client.call("session.request", {"bidId": "0x" + "77" * 32,
                                                      "key": SessionKey.generate()
                                                      .public_key_hex})
        assert raised.value.code == ErrorCode.CHAIN_UNAVAILABLE
        assert key not in raised.value.message and str(rpc_port) not in raised.value.message
        await asyncio.sleep(2)  # let the market index log its failed polls too
        log = logs_of(state, "leaky")
        assert "chain_read_failed" in log and "/v2/***" in log, log[-2000:]
        assert key not in log
    finally:
        if "leaky" in net.pids:
            await asyncio.to_thread(net.stop, "leaky")
        await runner.cleanup()


def _router_command() -> list[str]:
    from proxy_router.dev.devnet import router_command

    return router_command()


# -- health-aware approvals ----------------------------------------------------------------


async def test_a_provider_with_its_backend_down_refuses_approvals_so_no_gas_is_spent(
        state: DevnetState, backend: MockBackend) -> None:
    backend.stop()
    try:
        await asyncio.sleep(6)  # past the cached probe
        async with rpc_client(state, dev_key(PAYER)) as client:
            with pytest.raises(RpcError) as raised:
                await client.call("session.request", {
                    "bidId": state.bid_id, "key": SessionKey.generate().public_key_hex})
        assert raised.value.code == ErrorCode.BACKEND_UNAVAILABLE
    finally:
        backend.start()


# -- a hostile provider (last: its cheap bid must not attract the other tests) ---------


async def test_a_hostile_registered_provider_answering_with_a_bomb_cannot_kill_the_consumer(
        net: Devnet, state: DevnetState, tmp_path: Path) -> None:
    """A provider on chain whose MOR-RPC endpoint answers every frame with a nesting bomb
    (and an oversized frame): the consumer's request fails cleanly and it lives on."""
    port = free_port()
    hostile_endpoint = f"127.0.0.1:{port}"

    async def answer_with_bombs(req: aiohttp.web.Request) -> aiohttp.web.WebSocketResponse:
        ws = aiohttp.web.WebSocketResponse()
        await ws.prepare(req)
        async for _ in ws:
            await ws.send_str(BOMB)
            await ws.send_str('{"id":1,"result":' + BOMB + "}")
        return ws

    app = aiohttp.web.Application()
    app.router.add_get(WS_PATH, answer_with_bombs)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.to_thread(asyncio.run, net._onboard_provider(ATTACKER, hostile_endpoint,
                                                                    10**13))
        consumer_url = await asyncio.to_thread(
            net.add_consumer, OBSERVER, {"PROVIDER_ALLOWLIST": _address(ATTACKER),
                                         "FIRST_TOKEN_TIMEOUT_S": "3",
                                         "MOR_RPC_CONNECT_TIMEOUT_S": "2"})
        status, body = await chat(consumer_url, model=state.model_name,
                                  headers=_auth(net, f"consumer{OBSERVER}"))
        assert status == 503, body
        error_of(body, "no_provider_available")
        status, _ = await request("GET", consumer_url + "/healthcheck")
        assert status == 200, "the consumer survived the bomb"
        await alive(state)
    finally:
        await runner.cleanup()


def _address(account: int) -> str:
    from proxy_router.dev.anvil import dev_address

    return dev_address(account)


def _auth(net: Devnet, consumer: str) -> dict[str, str]:
    assert net.state is not None
    return net.state.auth(consumer)


async def test_after_every_attack_no_mor_is_stuck_in_escrow(
        state: DevnetState, market: Marketplace) -> None:
    status, rows = await request("GET", state.consumer_base + "/blockchain/sessions")
    assert status == 200
    for row in rows:
        if row["status"] == "open":
            status, body = await request(
                "POST", f"{state.consumer_base}/blockchain/sessions/{row['sessionId']}/close",
                headers=state.auth())
            assert status == 200, body
        await settled(market, row["sessionId"])
    await alive(state)
