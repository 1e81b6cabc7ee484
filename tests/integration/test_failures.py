"""Every way a paid chat can fail gives one clear error and loses no MOR.

Whole stack on the mock devnet: one provider with ONE capacity slot in front of
a MOCK backend this module stops and restarts. For every case the error is
pinned exactly (HTTP status + OpenAI-shaped ``{"error": {...}}`` from the
consumer, or the MOR-RPC ``ErrorCode`` at the protocol level), and the money is
checked to the wei: the MOR held by every party the marketplace can move money
between is unchanged, and each session touched, once closed, satisfies
``stake == providerEarned + userRefund + held`` with the balances moving by
exactly those amounts.

Other wallets get consumer routers of their own, in process. Tests run in file
order and share the chain: each leaves no session open and waits for the
provider's single slot to be free before taking it. Time travel comes last.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from eth_account import Account

from proxy_router.chain.marketplace import Marketplace
from proxy_router.dev.anvil import dev_key, rpc
from proxy_router.dev.devnet import DevnetState
from proxy_router.morrpc import (
    CipherCache,
    ErrorCode,
    Role,
    RpcClient,
    RpcError,
    SessionKey,
    Signer,
    recover_frame_public_key,
    recover_frame_signer,
)
from proxy_router.morrpc.protocol import payload_aad, request_frame
from tests.integration.conftest import (
    InProcessConsumer,
    MockBackend,
    MockDevnet,
    consumer_router,
    market_for,
)
from tests.integration.helpers import (
    DURATION,
    MESSAGES,
    assert_paid,
    backend_down,
    backend_running,
    chat,
    close_session,
    closed_session,
    error_of,
    eventually,
    exchange,
    holdings,
    my_session_ids,
    next_second,
    open_session,
    prompt_as,
    provider_capacity,
    provider_error,
    raw_socket,
    request,
    settled,
    travel,
    tx_count,
    wait_provider_idle,
)

pytestmark = pytest.mark.integration

USER, OTHER, PATIENT, DONOR = 2, 3, 4, 5  # anvil dev accounts (3..8 hold 10,000 MOR)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state(mock_devnet: MockDevnet) -> DevnetState:
    return mock_devnet.state


@pytest.fixture(scope="module")
def backend(mock_devnet: MockDevnet) -> MockBackend:
    return mock_devnet.backend


@pytest.fixture(scope="module")
async def other(state: DevnetState, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[InProcessConsumer]:
    """A second consumer router, for dev account 3 (10,000 MOR, never used by the devnet)."""
    async with consumer_router(state, dev_key(OTHER),
                               tmp_path_factory.mktemp("other-consumer")) as consumer:
        yield consumer


@pytest.fixture
async def free_slot(state: DevnetState) -> None:
    """The provider's only slot is free (no session, approval or prompt holds it)."""
    await wait_provider_idle(state)


@pytest.fixture
async def patient(state: DevnetState, tmp_path: Path) -> AsyncIterator[InProcessConsumer]:
    """A consumer (dev account 4) that will not auto-close an expired session mid-test."""
    async with consumer_router(state, dev_key(PATIENT), tmp_path,
                               session_sweep_interval_s=300) as consumer:
        yield consumer


# -- requests the consumer rejects before anything happens on chain -------------------------


@pytest.mark.parametrize(("raw", "code", "param"), [
    (b"{not json", "invalid_json", None),
    (b"", "invalid_json", None),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "invalid_parameter", "model"),
    (b'{"model": "m", "messages": "hi"}', "invalid_parameter", "messages"),
    (b'{"model": "m", "messages": []}', "invalid_parameter", "messages"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"}',
     "invalid_parameter", "max_tokens"),
    (b'{"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}',
     "invalid_parameter", "messages.0.role"),
    (b"[]", "invalid_parameter", None),
], ids=["malformed", "empty", "no-model", "messages-not-a-list", "no-messages",
        "max-tokens-not-int", "bad-role", "not-an-object"])
async def test_a_malformed_chat_request_is_a_400_naming_the_field(
        state: DevnetState, market: Marketplace, raw: bytes, code: str, param: str | None):
    before = await holdings(market, state)
    nonce = tx_count(state, state.user_address)
    status, body = await request("POST", f"{state.consumer_url}/chat/completions", data=raw,
                                 headers={"Content-Type": "application/json"})
    assert status == 400
    error = error_of(body, code)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if param is not None:
        assert error["message"].startswith(f"{param}: ")
    assert not error["message"].startswith("None")
    assert await holdings(market, state) == before
    assert tx_count(state, state.user_address) == nonce


async def test_a_session_request_with_a_bad_duration_is_a_400(state: DevnetState,
                                                              market: Marketplace):
    before = await holdings(market, state)
    status, body = await request(
        "POST", f"{state.consumer_base}/blockchain/models/{state.model_id}/session",
        json_body={"sessionDuration": 10}, headers=state.auth())
    assert status == 400
    assert error_of(body, "invalid_parameter")["param"] == "sessionDuration"
    assert await holdings(market, state) == before


async def test_an_unknown_model_is_a_404_everywhere_and_touches_no_chain(
        state: DevnetState, market: Marketplace):
    before = await holdings(market, state)
    nonce = tx_count(state, state.user_address)
    status, body = await chat(state.consumer_base, model="no-such-model")
    assert status == 404
    assert error_of(body, "model_not_found")["param"] == "model"
    for path in ("/blockchain/models/nope/bids", "/blockchain/models/nope/bids/rated"):
        status, body = await request("GET", state.consumer_base + path)
        assert status == 404, path
        assert "`nope`" in error_of(body, "model_not_found")["message"]
    status, body = await request("POST",
                                 f"{state.consumer_base}/blockchain/models/nope/session",
                                 headers=state.auth())
    assert status == 404
    error_of(body, "model_not_found")
    assert await holdings(market, state) == before
    assert tx_count(state, state.user_address) == nonce


# -- insufficient MOR ---------------------------------------------------------------------------


async def test_insufficient_mor_is_a_402_down_to_the_last_wei_and_sends_no_transaction(
        state: DevnetState, market: Marketplace, tmp_path: Path, free_slot):
    broke = Account.create()
    rpc(state.rpc_url, "anvil_setBalance", [broke.address, hex(10**19)])  # 10 ETH, 0 MOR
    stake = (await market.get_bid(state.bid_id)).price_per_second * DURATION
    donor = await market_for(state, dev_key(DONOR))
    before = await holdings(market, state, broke.address, donor.client.address)
    try:
        async with consumer_router(state, "0x" + bytes(broke.key).hex(), tmp_path,
                                   session_duration_s=DURATION) as consumer:
            for balance in (0, stake - 1):
                if balance:
                    await donor.client.transact(donor.token, "transfer", broke.address,
                                                balance)
                status, body = await chat(consumer.base, model=state.model_name)
                assert status == 402
                error = error_of(body, "insufficient_mor")
                assert error["type"] == "insufficient_funds"
                assert f"needs {stake} MOR wei; the wallet holds {balance}" in error["message"]
                status, body = await request(
                    "POST", f"{consumer.base}/blockchain/models/{state.model_id}/session",
                    json_body={"sessionDuration": DURATION}, headers=consumer.auth())
                assert status == 402
                error_of(body, "insufficient_mor")
                assert tx_count(state, broke.address) == 0  # not even an approve()
                cap = await provider_capacity(state)  # no approval asked for: no slot held
                assert cap["sessions"] == 0

            await donor.client.transact(donor.token, "transfer", broke.address, 1)
            status, body = await chat(consumer.base, model=state.model_name)  # exactly enough
            assert status == 200, body
            (session_id,) = await my_session_ids(consumer.base)
            status, body = await request(
                "POST", f"{consumer.base}/blockchain/sessions/{session_id}/close",
                headers=consumer.auth())
            assert status == 200, body
    finally:
        await donor.client.close()
    s = await settled(market, session_id)
    assert s.stake == stake
    after = await holdings(market, state, broke.address, donor.client.address)
    assert {k: after[k] - before[k] for k in after} == {
        **{k: 0 for k in after}, donor.client.address: -stake,
        broke.address: stake - s.provider_earned, "provider": s.provider_earned}


# -- forged, stale and replayed MOR-RPC frames -----------------------------------------------


async def test_forged_stale_and_replayed_frames_are_refused_with_distinct_codes(
        state: DevnetState):
    signer = Signer.from_key(dev_key(OTHER))
    async with raw_socket(state) as ws:
        ping = signer.sign_frame(request_frame(1, "network.ping", {"nonce": "0x01"},
                                               signer.address))
        (first,) = await exchange(ws, ping)
        assert first["result"]["nonce"] == "0x01"
        assert recover_frame_signer(first) == state.provider_address
        assert first["re"] == ping["nonce"]

        replies = await exchange(ws, ping)  # the very same signed frame again
        assert provider_error(state, replies, ping) == ErrorCode.REPLAYED_MESSAGE

        stale = signer.sign_frame({**request_frame(2, "network.ping", {}, signer.address),
                                   "timestamp": int(time.time()) - 120})
        replies = await exchange(ws, stale)
        assert provider_error(state, replies, stale) == ErrorCode.STALE_MESSAGE
        assert abs(replies[0]["error"]["data"]["serverTime"] - time.time()) < 5

        future = signer.sign_frame({**request_frame(3, "network.ping", {}, signer.address),
                                    "timestamp": int(time.time()) + 120})
        replies = await exchange(ws, future)
        assert provider_error(state, replies, future) == ErrorCode.STALE_MESSAGE

        impostor = signer.sign_frame(request_frame(4, "network.ping", {},
                                                   state.user_address))  # claims the user
        replies = await exchange(ws, impostor)
        assert provider_error(state, replies, impostor) == ErrorCode.BAD_SIGNATURE

        tampered = signer.sign_frame(request_frame(5, "network.ping", {"nonce": "0x01"},
                                                   signer.address))
        tampered["params"] = {"nonce": "0x02"}  # altered after signing
        replies = await exchange(ws, tampered)
        assert provider_error(state, replies, tampered) == ErrorCode.BAD_SIGNATURE

        unsigned = {**request_frame(6, "network.ping", {}, signer.address),
                    "timestamp": int(time.time()), "nonce": "0x" + os.urandom(16).hex()}
        replies = await exchange(ws, unsigned)
        assert provider_error(state, replies, unsigned) == ErrorCode.BAD_SIGNATURE

        fresh = signer.sign_frame(request_frame(7, "network.ping", {}, signer.address))
        (ok,) = await exchange(ws, fresh)  # the connection is still good
        assert "result" in ok


async def test_a_replayed_prompt_is_refused_and_the_session_settles_to_the_wei(
        state: DevnetState, market: Marketplace, free_slot):
    before = await holdings(market, state)
    session_id = await open_session(state)
    user = Signer.from_key(dev_key(USER))
    key = SessionKey.generate()
    async with raw_socket(state) as ws:
        ping = user.sign_frame(request_frame(1, "network.ping", {}, user.address))
        (pong,) = await exchange(ws, ping)
        cipher = CipherCache().get(key, recover_frame_public_key(pong), Role.CONSUMER)
        prompt = request_frame(2, "session.prompt", {}, user.address)
        prompt["nonce"] = "0x" + os.urandom(16).hex()
        sealed = cipher.seal(json.dumps({"messages": MESSAGES, "max_tokens": 4}).encode(),
                             payload_aad(2, prompt["nonce"]))
        prompt["params"] = {"sessionId": session_id, "key": key.public_key_hex,
                            "payload": base64.b64encode(sealed).decode()}
        prompt = user.sign_frame(prompt)

        answer = await exchange(ws, prompt)  # as recorded on the wire by an eavesdropper
        assert [f for f in answer if "chunk" in f], answer
        assert answer[-1]["result"]["chunks"] == len(answer) - 1

        replies = await exchange(ws, prompt)
        assert provider_error(state, replies, prompt) == ErrorCode.REPLAYED_MESSAGE

    settlement = await close_session(state, session_id)
    assert settlement["disputed"] is False
    s = await settled(market, session_id)
    assert s.held == 0 and int(settlement["providerEarned"]) == s.provider_earned
    assert_paid(before, await holdings(market, state), s)
    await wait_provider_idle(state)  # the provider has seen the close (its index lags)
    with pytest.raises(RpcError) as err:  # and a fresh prompt after the close
        await prompt_as(user, state, session_id)
    assert err.value.code == ErrorCode.SESSION_CLOSED


# -- someone else's session ---------------------------------------------------------------


async def test_a_session_cannot_be_used_or_settled_by_another_wallet(
        state: DevnetState, market: Marketplace, other: InProcessConsumer, free_slot):
    before = await holdings(market, state, other.address)
    session_id = await open_session(state)
    intruder = Signer.from_key(dev_key(OTHER))

    with pytest.raises(RpcError) as err:
        await prompt_as(intruder, state, session_id)
    assert err.value.code == ErrorCode.NOT_SESSION_USER
    async with RpcClient(state.provider_endpoint, intruder, state.provider_address) as client:
        with pytest.raises(RpcError) as err:
            await client.call("session.report", {"sessionId": session_id})
        assert err.value.code == ErrorCode.NOT_SESSION_USER
    with pytest.raises(RpcError) as err:
        await prompt_as(intruder, state, "0x" + "ab" * 32)
    assert err.value.code == ErrorCode.SESSION_NOT_FOUND

    # Through the other wallet's own consumer: its sessions only.
    status, body = await chat(other.base, model=state.model_name,
                              headers={"session_id": session_id})
    assert status == 404
    assert error_of(body, "session_not_found")["param"] == "session_id"
    status, body = await request("POST", f"{other.base}/blockchain/sessions/{session_id}/close",
                                 headers=other.auth())
    assert status == 403
    error_of(body, "not_session_user")
    # And the user's consumer does not know a session id it never opened.
    status, body = await chat(state.consumer_base, model=state.model_name,
                              headers={"session_id": "0x" + "cd" * 32})
    assert status == 404
    error_of(body, "session_not_found")

    # The owner's session is untouched and still serves the owner.
    status, body = await chat(state.consumer_base, model=state.model_name,
                              headers={"session_id": session_id})
    assert status == 200, body
    assert body["choices"][0]["message"]["content"]
    settlement = await close_session(state, session_id)
    assert settlement["disputed"] is False
    s = await settled(market, session_id)
    after = await holdings(market, state, other.address)
    assert_paid(before, after, s)
    assert after[other.address] == before[other.address]
    assert tx_count(state, other.address) == 0


# -- no free capacity -----------------------------------------------------------------------


async def test_a_provider_with_no_free_slot_refuses_new_sessions_and_nothing_is_escrowed(
        state: DevnetState, market: Marketplace, other: InProcessConsumer, free_slot):
    before = await holdings(market, state, other.address)
    session_id = await open_session(state)  # takes the provider's only slot...
    try:
        async def seen() -> bool:  # ...once the provider has seen it opened on chain
            return (await provider_capacity(state))["sessions"] == 1
        await eventually(seen, 15, "the provider did not count the opened session")
        async with RpcClient(state.provider_endpoint, Signer.from_key(dev_key(OTHER)),
                             state.provider_address) as client:
            with pytest.raises(RpcError) as err:
                await client.call("session.request", {"bidId": state.bid_id,
                                                      "key": SessionKey.generate()
                                                      .public_key_hex})
        assert err.value.code == ErrorCode.NO_CAPACITY

        started = time.monotonic()
        status, body = await chat(other.base, model=state.model_name)
        assert time.monotonic() - started < 5
        assert status == 503
        error = error_of(body, "no_provider_available")
        assert error["type"] == "api_error"
        assert "NO_CAPACITY" in error["message"] and state.provider_address in error["message"]
        assert tx_count(state, other.address) == 0  # no approve(), no openSession()
    finally:
        await close_session(state, session_id)
    s = await settled(market, session_id)
    after = await holdings(market, state, other.address)
    assert_paid(before, after, s)
    assert after[other.address] == before[other.address]


async def test_a_prompt_waits_for_its_sessions_turn_and_is_a_429_only_past_the_timeout(
        state: DevnetState, market: Marketplace, backend: MockBackend, free_slot):
    """One prompt at a time per session: a second one waits for the first (up to
    PROMPT_QUEUE_WAIT_S, 4 s here), then is a 429 ``session_busy`` with Retry-After;
    the first answer is unharmed and the session stays usable."""
    before = await holdings(market, state)
    async with backend_running(backend, "--token-delay", "0.6"):  # 12 tokens: 7.2 s
        session_id = await open_session(state)
        headers = {"session_id": session_id}
        async with aiohttp.ClientSession() as http, http.post(
                f"{state.consumer_url}/chat/completions", headers=headers,
                json={"model": state.model_name, "messages": MESSAGES, "stream": True}
                ) as streaming:
            assert streaming.status == 200
            assert (await streaming.content.readline()).startswith(b"data: ")
            async with http.post(f"{state.consumer_url}/chat/completions", headers=headers,
                                 json={"model": state.model_name, "messages": MESSAGES,
                                       "max_tokens": 8}) as second:
                assert second.status == 429
                assert second.headers["Retry-After"] == "1"
                error = error_of(await second.json(), "session_busy")
            assert error["type"] == "rate_limit_error"
            rest = (await streaming.read()).decode()  # the first answer is unharmed
            assert rest.rstrip().endswith("data: [DONE]") and '"error"' not in rest
    async with aiohttp.ClientSession() as http:  # 12 tokens at 0.01 s: both get answers
        results = await asyncio.gather(*(http.post(
            f"{state.consumer_url}/chat/completions", headers=headers,
            json={"model": state.model_name, "messages": MESSAGES, "max_tokens": 2})
            for _ in range(2)))
        assert [r.status for r in results] == [200, 200]
        for r in results:
            r.release()
    await close_session(state, session_id)
    s = await settled(market, session_id)
    assert_paid(before, await holdings(market, state), s)


# -- backend down ---------------------------------------------------------------------------


async def test_backend_down_on_a_chosen_session_is_a_fast_503_and_the_session_settles(
        state: DevnetState, market: Marketplace, backend: MockBackend, free_slot):
    before = await holdings(market, state)
    session_id = await open_session(state)
    async with backend_down(backend):
        started = time.monotonic()
        status, body = await chat(state.consumer_base, model=state.model_name,
                                  headers={"session_id": session_id})
        assert time.monotonic() - started < 5
    assert status == 503
    assert error_of(body, "backend_unavailable")["type"] == "api_error"
    settlement = await close_session(state, session_id)
    assert settlement["disputed"] is False
    s = await settled(market, session_id)
    assert_paid(before, await holdings(market, state), s)


async def test_backend_down_refuses_the_session_so_no_gas_and_no_mor_is_spent(
        state: DevnetState, market: Marketplace, backend: MockBackend, free_slot):
    """A provider that knows its backend is down refuses to sign an approval: the
    consumer gets a fast 503 naming the cause, and nothing was sent on chain.

    It knows once a probe saw it (a good probe is trusted for 5 s, so an approval flood
    costs few probes): here its health check, which an operator's monitoring polls and
    which probes every backend now, so the spec does not hang on how recently an earlier
    test's approval probed."""
    before = await holdings(market, state)
    known = await my_session_ids(state.consumer_base)
    txs = tx_count(state, state.user_address)
    async with backend_down(backend):
        status, health = await request("GET", f"http://{state.provider_endpoint}/healthcheck")
        assert status == 503 and f"backend:{state.model_name}" in health["failing"], health
        started = time.monotonic()
        status, body = await chat(state.consumer_base, model=state.model_name)
        elapsed = time.monotonic() - started
    assert elapsed < 10
    assert status == 503, body
    error = error_of(body, "no_provider_available")
    assert error["type"] == "api_error"
    assert "BACKEND_UNAVAILABLE" in error["message"]
    assert state.provider_address in error["message"]
    assert await my_session_ids(state.consumer_base) == known
    assert tx_count(state, state.user_address) == txs, "no approve(), no openSession()"
    assert await holdings(market, state) == before


# -- approvals carry whole seconds and no nonce ------------------------------------------------


async def test_a_session_can_be_reopened_in_the_second_the_last_one_closed(
        state: DevnetState, market: Marketplace, free_slot):
    """A byte-identical approval would make openSession revert (ApprovalAlreadyUsed) and
    leave the provider's slot reserved for an approval that can never be used."""
    before = await holdings(market, state)
    await next_second()
    first = await open_session(state)
    await close_session(state, first)
    await wait_provider_idle(state)
    second = await open_session(state)
    await close_session(state, second)
    sessions = [await settled(market, sid) for sid in (first, second)]
    assert_paid(before, await holdings(market, state), *sessions)


# -- expired session (time travel: keep last) ------------------------------------------------


async def test_an_expired_session_is_a_409_and_settles_at_exactly_its_full_price(
        state: DevnetState, market: Marketplace, patient: InProcessConsumer, free_slot):
    before = await holdings(market, state, patient.address)
    status, body = await request(
        "POST", f"{patient.base}/blockchain/models/{state.model_id}/session",
        json_body={"sessionDuration": DURATION}, headers=patient.auth())
    assert status == 201, body
    session_id = body["sessionId"]
    opened = await market.get_session(session_id)
    # Past endsAt, but within the provider's grace period (it would close it itself).
    await travel(state, DURATION + 5)

    status, body = await chat(patient.base, model=state.model_name,
                              headers={"session_id": session_id})
    assert status == 409
    assert error_of(body, "session_expired")["type"] == "invalid_request_error"
    with pytest.raises(RpcError) as err:
        await prompt_as(Signer.from_key(dev_key(PATIENT)), state, session_id)
    assert err.value.code == ErrorCode.SESSION_EXPIRED

    status, settlement = await request(
        "POST", f"{patient.base}/blockchain/sessions/{session_id}/close",
        headers=patient.auth())
    assert status == 200, settlement
    s = await settled(market, session_id)
    assert s.provider_earned == DURATION * opened.price_per_second == opened.stake
    assert s.user_refund == 0 and s.held == 0 and not s.disputed
    assert int(settlement["providerEarned"]) == s.provider_earned
    assert int(settlement["userRefund"]) == s.user_refund == 0
    assert_paid(before, await holdings(market, state, patient.address), s,
                user=patient.address)


async def test_an_expired_session_left_open_is_settled_by_the_consumer_at_its_full_price(
        state: DevnetState, market: Marketplace, free_slot):
    before = await holdings(market, state)
    session_id = await open_session(state)
    await travel(state, DURATION + 5)
    await eventually(lambda: closed_session(market, session_id), 20,
                     "the consumer did not settle its expired session")
    s = await settled(market, session_id)
    assert s.provider_earned == s.stake and s.user_refund == 0
    assert s.held == 0 and not s.disputed  # settled by the user, with a receipt
    assert_paid(before, await holdings(market, state), s)
    status, body = await chat(state.consumer_base, model=state.model_name,
                              headers={"session_id": session_id})
    assert status == 404
    error_of(body, "session_not_found")
