"""The paid path in the Morpheus flavour, end to end with the real model.

Provider and consumers run with ``MARKETPLACE_FLAVOR=morpheus`` against a Morpheus-Lumerin
diamond (our double always; the reference's own contracts under ``make test-morpheus``),
and the consumers speak the reference's raw-TCP wire to our provider
(``PROVIDER_WIRE=reference``), as a Go consumer would. One consumer pays directly, one
in stake mode; both close early, get part of their stake held until the next UTC
midnight, travel past it and withdraw it. Every balance is checked to the wei against
what the contract says.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from openai import AsyncOpenAI

from proxy_router.chain.client import ChainClient
from proxy_router.chain.morpheus import DAY, MorpheusMarketplace, start_of_day
from proxy_router.dev.anvil import dev_address
from proxy_router.dev.devnet import Devnet, DevnetState
from proxy_router.dev.morpheus_net import reference_available
from tests.integration.helpers import close_session, next_second, request, travel

pytestmark = pytest.mark.integration

STAKER = 3  # the dev account of the stake-mode consumer
MESSAGES = [{"role": "user", "content": "Say hello in three words."}]


@pytest.fixture(scope="module", params=["double", "reference"])
def morpheus_devnet(request: pytest.FixtureRequest, devnet: DevnetState,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Devnet,
                                                                                DevnetState]]:
    """A Morpheus-flavour stack in front of the shared devnet's llama.cpp (the real
    SmolLM2 model): one model process for the whole test run."""
    if request.param == "reference" and (why := reference_available()):
        pytest.skip(f"Morpheus reference deployment NOT tested: {why}; "
                    "run `make test-morpheus`")
    net = Devnet(Path(tmp_path_factory.mktemp(f"morpheus-{request.param}")),
                 progress=lambda _: None)
    state = net.up(backend_url=devnet.backend_url, flavor="morpheus", diamond=request.param,
                   extra_router_env={"PROVIDER_WIRE": "reference"})
    try:
        yield net, state
    finally:
        net.down()


@pytest.fixture
async def diamond(morpheus_devnet: tuple[Devnet, DevnetState]
                  ) -> AsyncIterator[MorpheusMarketplace]:
    _, state = morpheus_devnet
    client = await ChainClient.connect(state.rpc_url)
    try:
        yield MorpheusMarketplace(client, state.marketplace_address, state.mor_token_address)
    finally:
        await client.close()


async def balances(market: MorpheusMarketplace, state: DevnetState,
                   staker: str) -> dict[str, int]:
    return {name: await market.mor_balance(address) for name, address in {
        "user": state.user_address, "staker": staker, "provider": state.provider_address,
        "diamond": state.marketplace_address, "funding": state.funding_account}.items()}


async def chat_once(base: str) -> str:
    client = AsyncOpenAI(base_url=base + "/v1", api_key="local", max_retries=0)
    stream = await client.chat.completions.create(model="SmolLM2-135M-Instruct",
                                                  messages=MESSAGES, max_tokens=12,
                                                  stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def reference_prompts(state: DevnetState) -> float:
    """``session.prompt`` requests the provider served in the reference's wire."""
    async with aiohttp.ClientSession() as http, http.get(
            f"http://{state.provider_endpoint}/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("proxy_router_reference_rpc_requests_total{")
               and 'method="session.prompt"' in line and 'code="OK"' in line)


async def only_session(base: str) -> str:
    status, rows = await request("GET", f"{base}/blockchain/sessions")
    assert status == 200, rows
    [row] = [r for r in rows if r["status"] != "closed"]
    return str(row["sessionId"])


async def test_a_paid_chat_over_the_reference_wire_settles_to_the_wei(
        morpheus_devnet: tuple[Devnet, DevnetState], diamond: MorpheusMarketplace) -> None:
    net, state = morpheus_devnet
    staker_base = net.add_consumer(STAKER, {"SESSION_PAYMENT": "stake"})
    staker = dev_address(STAKER)
    start = await balances(diamond, state, staker)

    # both consumers buy from our provider through the Go consumers' wire
    assert (await chat_once(state.consumer_base)).strip()
    assert (await chat_once(staker_base)).strip()
    direct_id, stake_id = await only_session(state.consumer_base), await only_session(
        staker_base)
    assert await reference_prompts(state) == 2  # both went over the reference's wire
    direct, staked = await diamond.get_session(direct_id), await diamond.get_session(stake_id)
    assert direct.direct_payment and not staked.direct_payment
    assert start["user"] - (await balances(diamond, state, staker))["user"] == direct.stake

    # early close, with the provider's signed report
    await next_second()  # at least a second of each session is billed
    direct_close = await close_session(state, direct_id)
    status, stake_close = await request(
        "POST", f"{staker_base}/blockchain/sessions/{stake_id}/close",
        headers=state.auth(f"consumer{STAKER}"))
    assert status == 200, stake_close
    assert not direct_close["disputed"] and not stake_close["disputed"]
    direct, staked = await diamond.get_session(direct_id), await diamond.get_session(stake_id)
    closed = await balances(diamond, state, staker)
    for settled, session in ((direct_close, direct), (stake_close, staked)):
        assert int(settled["providerEarned"]) == session.provider_earned > 0
        assert int(settled["providerEarned"]) * session.direct_payment \
            + int(settled["userRefund"]) + int(settled["held"]) == session.stake
    paid = direct.provider_earned + staked.provider_earned
    assert closed["provider"] - start["provider"] == paid
    assert start["funding"] - closed["funding"] == staked.provider_earned
    held_direct, held_stake = int(direct_close["held"]), int(stake_close["held"])
    assert await diamond.held_stakes(state.user_address) == (0, held_direct)
    assert await diamond.held_stakes(staker) == (0, held_stake)
    stats = await diamond.get_stats(state.provider_address, state.model_id)
    assert stats.success_count == 2 and stats.mean_ttft_ms > 0  # the provider's report

    # the next UTC midnight releases the held stakes: withdraw them through the API
    now = (await diamond.client.head())[1]
    await travel(state, start_of_day(now) + DAY - now + 5)
    for base, name in ((state.consumer_base, "consumer"), (staker_base, f"consumer{STAKER}")):
        status, done = await request("POST", f"{base}/blockchain/stakes/withdraw",
                                     headers=state.auth(name))
        assert status == 200, done
        assert done["stillHeld"] == "0"
    final = await balances(diamond, state, staker)
    assert start["user"] - final["user"] == direct.provider_earned  # paid for the time
    assert final["staker"] == start["staker"]  # stake mode: the emission paid
    assert final["provider"] - start["provider"] == paid
    assert sum(final.values()) == sum(start.values())  # MOR only moved between these


async def test_health_and_balance_name_the_flavour(
        morpheus_devnet: tuple[Devnet, DevnetState]) -> None:
    _, state = morpheus_devnet
    status, health = await request("GET", f"{state.consumer_base}/healthcheck")
    assert health["marketplace"]["flavor"] == "morpheus", (status, health)
    status, balance = await request("GET", f"{state.consumer_base}/blockchain/balance",
                                    headers=state.auth())
    assert status == 200 and balance["flavor"] == "morpheus"


async def test_two_of_ours_upgrade_to_mor_rpc_on_their_own(
        morpheus_devnet: tuple[Devnet, DevnetState]) -> None:
    """``PROVIDER_WIRE=auto`` (the default): our consumer's WebSocket upgrade succeeds at
    our provider's port, so the prompt never touches the reference's wire."""
    net, state = morpheus_devnet
    before = await reference_prompts(state)
    base = net.add_consumer(4, {"PROVIDER_WIRE": "auto"})
    assert (await chat_once(base)).strip()
    assert await reference_prompts(state) == before
    log = (Path(state.root) / "consumer4.log").read_text()
    assert "provider_speaks_reference_wire" not in log
