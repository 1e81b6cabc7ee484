"""Fault tests: crashes and outages never lose MOR.

Two providers bid on the model, each in front of its own MOCK backend (slow
enough to be killed mid-answer); the routers run as real processes on a real
anvil whose state survives a restart. After every fault, each session touched
is closed with stake == paid + refunded + held, and the MOR held by users,
providers, the contract and the fee recipient adds up to the same total.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from proxy_router.chain.marketplace import Marketplace
from proxy_router.chain.types import Session
from proxy_router.dev.anvil import dev_address
from proxy_router.dev.devnet import Devnet, DevnetState
from proxy_router.ports import free_port
from tests.integration.conftest import MockBackend, market_for

pytestmark = pytest.mark.integration

SECOND_PROVIDER, SECOND_USER, LEFT_OPEN_USER = 4, 5, 6
SLOW_TOKENS = ["--tokens", "40", "--token-delay", "0.05"]  # ~2 s per answer


@dataclass
class Faults:
    net: Devnet
    state: DevnetState
    backends: list[MockBackend]

    @property
    def parties(self) -> dict[str, str]:
        s = self.state
        return {"user": s.user_address, "user2": dev_address(SECOND_USER),
                "provider": s.provider_address, "provider2": dev_address(SECOND_PROVIDER),
                "marketplace": s.marketplace_address, "fee_recipient": s.fee_recipient}


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    first = MockBackend(free_port(), SLOW_TOKENS).start()
    second = MockBackend(free_port(), ["--tokens", "12", "--token-delay", "0.01"]).start()
    net = Devnet(tmp_path_factory.mktemp("faults"), progress=lambda _: None)
    try:
        state = net.up(backend_url=first.url, anvil_state=True,
                       extra_router_env={"FIRST_TOKEN_TIMEOUT_S": "5",
                                         "SESSION_SWEEP_INTERVAL_S": "1",
                                         "PROVIDER_CLOSE_GRACE_S": "5"})
        # Pricier, so the consumer rates it second: the failover target.
        net.add_provider(SECOND_PROVIDER, second.url, price=2 * 10**14)
        yield Faults(net, state, [first, second])
    finally:
        net.down()
        for backend in (first, second):
            backend.stop()


async def holdings(market: Marketplace, faults: Faults) -> dict[str, int]:
    return {name: await market.mor_balance(addr) for name, addr in faults.parties.items()}


async def wait_closed(market: Marketplace, session_id: str, limit: float = 45.0) -> Session:
    deadline = time.monotonic() + limit
    while True:
        session = await market.get_session(session_id)
        if session.closed:
            return session
        assert time.monotonic() < deadline, f"session {session_id} still open after {limit}s"
        await asyncio.sleep(0.5)


def assert_settled_to_the_wei(session: Session) -> None:
    assert session.closed
    assert session.stake == session.provider_earned + session.user_refund
    assert session.held in (0, session.provider_earned)
    elapsed = min(session.closed_at, session.ends_at) - session.opened_at
    assert session.provider_earned == elapsed * session.price_per_second


async def my_sessions(base: str) -> list[dict]:
    async with aiohttp.ClientSession() as http, http.get(base + "/blockchain/sessions") as resp:
        assert resp.status == 200
        return await resp.json()


async def open_session(base: str, bid_id: str, auth: dict[str, str]) -> str:
    async with aiohttp.ClientSession() as http, http.post(
            f"{base}/blockchain/bids/{bid_id}/session", json={"sessionDuration": 600},
            headers=auth) as resp:
        body = await resp.json()
        assert resp.status == 201, body
        return body["sessionId"]


async def test_provider_killed_mid_answer_fails_over_to_the_next_bid(faults: Faults):
    market = await market_for(faults.state)
    try:
        before = await holdings(market, faults)
        body = {"model": faults.state.model_name, "max_tokens": 40,
                "messages": [{"role": "user", "content": "count slowly"}]}
        async with aiohttp.ClientSession() as http:
            request = asyncio.create_task(http.post(
                faults.state.consumer_url + "/chat/completions", json=body))
            await asyncio.sleep(1.5)  # the first provider is streaming its answer now
            faults.net.kill("provider")
            resp = await asyncio.wait_for(request, 60)
            reply = await resp.json()
        assert resp.status == 200, reply
        assert reply["choices"][0]["message"]["content"].strip()

        sessions = {s["provider"].lower(): s for s in await my_sessions(
            faults.state.consumer_base)}
        dead = sessions[faults.state.provider_address.lower()]
        alive = sessions[dev_address(SECOND_PROVIDER).lower()]
        assert alive["status"] == "open"
        # The dead provider's session is settled without its receipt: a dispute.
        settled = await wait_closed(market, dead["sessionId"])
        assert_settled_to_the_wei(settled)
        assert settled.disputed and settled.held == settled.provider_earned
        after = await holdings(market, faults)
        assert sum(after.values()) == sum(before.values())
        assert after["marketplace"] - before["marketplace"] == (
            settled.held + int(alive["stake"]))
    finally:
        await market.client.close()
        restart(faults, "provider", f"http://{faults.state.provider_endpoint}")


async def test_consumer_killed_with_open_sessions_settles_them_after_restart(
        faults: Faults):
    market = await market_for(faults.state)
    try:
        bids = [faults.state.bid_id, await market.client.call(
            market.contract, "getActiveBidId", dev_address(SECOND_PROVIDER),
            bytes.fromhex(faults.state.model_id[2:]))]
        session_ids = [await open_session(faults.state.consumer_base,
                                          "0x" + bytes(b).hex() if isinstance(b, bytes) else b,
                                          faults.state.auth())
                       for b in bids]
        before = await holdings(market, faults)
        faults.net.kill("consumer")
        # Restarted with a short idle timeout, it closes what it had open.
        restart(faults, "consumer", faults.state.consumer_base, {"SESSION_IDLE_TIMEOUT_S": "2"})
        for session_id in session_ids:
            assert_settled_to_the_wei(await wait_closed(market, session_id))
        after = await holdings(market, faults)
        assert sum(after.values()) == sum(before.values())
    finally:
        await market.client.close()
        faults.net.kill("consumer")
        restart(faults, "consumer", faults.state.consumer_base)


async def test_anvil_down_for_ten_seconds_then_restored_loses_no_event(faults: Faults):
    state = faults.state
    market = await market_for(state)
    try:
        before = await holdings(market, faults)
        faults.net.stop("anvil")  # SIGTERM: anvil dumps --state
        stopped = time.monotonic()
        async with aiohttp.ClientSession() as http:
            health = None
            while time.monotonic() - stopped < 8:
                async with http.get(state.consumer_base + "/healthcheck") as resp:
                    health = (resp.status, await resp.json())
                if health[0] == 503:
                    break
                await asyncio.sleep(0.5)
            assert health is not None and health[0] == 503
            assert "chain" in health[1]["failing"]
            await asyncio.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
            faults.net.start("anvil")
            await asyncio.sleep(1.0)

            provider2 = await market_for(state, _key(SECOND_PROVIDER))
            try:
                new_bid, _ = await provider2.post_bid(state.model_id, 3 * 10**14)
            finally:
                await provider2.client.close()
            deadline = time.monotonic() + 20
            while True:
                async with http.get(f"{state.consumer_base}/blockchain/models/"
                                    f"{state.model_id}/bids") as resp:
                    indexed = {b["id"] for b in await resp.json()}
                if new_bid in indexed:
                    break
                assert time.monotonic() < deadline, "index did not catch up"
                await asyncio.sleep(0.5)
            ids, _ = await market.client.call(market.contract, "getActiveBidsByModel",
                                              bytes.fromhex(state.model_id[2:]), 0, 100)
            assert indexed == {"0x" + bytes(i).hex() for i in ids}
            async with http.get(state.consumer_base + "/healthcheck") as resp:
                assert resp.status == 200
        after = await holdings(market, faults)
        assert sum(after.values()) == sum(before.values())
    finally:
        await market.client.close()


async def test_a_dead_first_rpc_url_does_not_stop_a_paid_chat(faults: Faults):
    dead = f"http://127.0.0.1:{free_port()}"
    base = faults.net.add_consumer(
        SECOND_USER, {"ETH_NODE_ADDRESS": f"{dead},{faults.state.rpc_url}"})
    market = await market_for(faults.state)
    try:
        before = await holdings(market, faults)
        async with aiohttp.ClientSession() as http, http.post(
                base + "/v1/chat/completions",
                json={"model": faults.state.model_name, "max_tokens": 5,
                      "messages": [{"role": "user", "content": "hi"}]}) as resp:
            reply = await resp.json()
            assert resp.status == 200, reply
            session_id = resp.headers["X-Session-Id"]
        async with aiohttp.ClientSession() as http, http.post(
                f"{base}/blockchain/sessions/{session_id}/close",
                headers=faults.state.auth(f"consumer{SECOND_USER}")) as resp:
            assert resp.status == 200, await resp.text()
        assert_settled_to_the_wei(await market.get_session(session_id))
        after = await holdings(market, faults)
        assert sum(after.values()) == sum(before.values())
    finally:
        await market.client.close()


async def travel(state: DevnetState, seconds: int) -> None:
    """Move chain time; routers see it at their next index poll (0.5 s)."""
    from proxy_router.dev.anvil import rpc

    rpc(state.rpc_url, "evm_increaseTime", [seconds])
    rpc(state.rpc_url, "evm_mine")
    await asyncio.sleep(1.0)


async def test_provider_closes_a_session_its_user_left_open_and_is_paid_in_full(
        faults: Faults):
    """No consumer runs for this user: after endsAt + grace the provider settles."""
    from proxy_router.morrpc import RpcClient, SessionKey, Signer

    state, user = faults.state, LEFT_OPEN_USER
    async with RpcClient(state.provider_endpoint, Signer.from_key(_key(user)),
                         state.provider_address) as rpc_client:
        reply = await rpc_client.call("session.request", {
            "bidId": state.bid_id, "key": SessionKey.generate().public_key_hex})
    market = await market_for(state, _key(user))
    try:
        bid = await market.get_bid(state.bid_id)
        stake = bid.price_per_second * 300
        session_id, _ = await market.open_session(
            stake, bytes.fromhex(reply["approval"][2:]), bytes.fromhex(reply["approvalSig"][2:]))
        provider_before = await market.mor_balance(state.provider_address)
        await travel(state, 300 + 10)  # past endsAt + the 5 s grace of this devnet
        session = await wait_closed(market, session_id)
        assert_settled_to_the_wei(session)
        assert not session.disputed and session.provider_earned == stake
        assert await market.mor_balance(state.provider_address) == provider_before + stake
    finally:
        await market.client.close()


async def test_provider_claims_a_disputed_share_once_the_window_has_passed(faults: Faults):
    """The dispute from the killed provider's session is claimed by its sweeper."""
    state = faults.state
    market = await market_for(state)
    try:
        ids, _ = await market.client.call(market.contract, "getSessionsByProvider",
                                          state.provider_address, 0, 100)
        sessions = {"0x" + bytes(i).hex(): await market.get_session(i) for i in ids}
        disputed = {sid: s for sid, s in sessions.items()
                    if s.disputed and s.held and not s.claimed}
        assert disputed, "the failover test leaves a disputed session"
        before = await market.mor_balance(state.provider_address)
        await travel(state, await market.param("disputeWindow") + 10)
        deadline = time.monotonic() + 45
        for session_id in disputed:
            while not (await market.get_session(session_id)).claimed:
                assert time.monotonic() < deadline, "disputed share not claimed"
                await asyncio.sleep(0.5)
        held = sum(s.held for s in disputed.values())
        assert await market.mor_balance(state.provider_address) == before + held
    finally:
        await market.client.close()


def restart(faults: Faults, name: str, url: str, env: dict[str, str] | None = None) -> None:
    """Start a router again and wait until its /healthcheck answers 200."""
    faults.net.start(name, env)
    faults.net.wait_until(name, lambda: _healthy(url), 60, name)


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/healthcheck", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _key(account: int) -> str:
    from proxy_router.dev.anvil import dev_key

    return dev_key(account)
