"""The operator commands against the Morpheus-Lumerin diamond (our double on a fresh
anvil), configured as a reference ``.env`` is: ``MARKETPLACE_FLAVOR=morpheus``,
``DIAMOND_CONTRACT_ADDRESS``, ``MOR_TOKEN_ADDRESS``. The commands are those of
``test_operator.py``; what the diamond does differently is checked to the wei:

- an early close holds the stake that the day's used time is worth until the next UTC
  midnight; ``wallet withdraw-held`` takes it back then, and sends nothing before;
- ``claimForProvider`` pays whatever an ended session earned and was not paid, closed
  or not, and reverts (``Panic(0x11)``) where nothing is owed after an early close the
  same day: ``earnings --claim`` only claims a positive ``claimable``;
- deregistering keeps what the provider earned in its 365-day pay period staked.

One chain for the module, moved to just after a UTC midnight first so that the day's
holds cannot be released while the tests run; the tests run in order on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_account import Account
from web3.exceptions import ContractPanicError

from proxy_router.chain.client import ChainClient
from proxy_router.chain.encoding import Approval, Receipt, sign_blob
from proxy_router.chain.flavor import to_bytes32
from proxy_router.chain.morpheus import DAY, MorpheusMarketplace, start_of_day
from proxy_router.chain.types import Session
from proxy_router.cli.output import when
from proxy_router.cli.units import with_wei
from proxy_router.dev.anvil import Anvil, dev_address, dev_key, rpc
from proxy_router.dev.morpheus_net import MorpheusNet, deploy_double
from proxy_router.morrpc import RpcServer, Signer

from .test_operator import Cli, line_value

PROVIDER, USER = 1, 2
PRICE = 10**15  # wei per second, inside the diamond's bounds on base (1e13..1e16)
HOUR = 3600
MOR = 10**18
PROVIDER_STAKE = 100 * MOR  # the diamond pays a provider at most its stake per period
MODEL = "TinyModel-M"
STAMPS: set[int] = set()  # approval stamps used in this run


def head_timestamp(rpc_url: str) -> int:
    block = rpc(rpc_url, "eth_getBlockByNumber", ["latest", False])
    assert isinstance(block, dict)
    return int(block["timestamp"], 16)


@dataclass
class Diamond:
    anvil: Anvil
    net: MorpheusNet
    cli: Cli
    model_id: str
    bid_id: str
    closes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What ``session close --json`` printed, by session id."""

    @property
    def as_user(self) -> dict[str, str]:
        return {"WALLET_PRIVATE_KEY": dev_key(USER)}

    async def market(self, account: int | None = None) -> MorpheusMarketplace:
        key = dev_key(account) if account is not None else None
        client = await ChainClient.connect(self.anvil.rpc_url, key)
        return MorpheusMarketplace(client, self.net.diamond, self.net.mor)

    async def read(self, fn: str, *args: Any) -> Any:
        """One read through the flavour, on a connection of its own."""
        market = await self.market()
        try:
            return await getattr(market, fn)(*args)
        finally:
            await market.client.close()

    def now(self) -> int:
        return head_timestamp(self.anvil.rpc_url)

    def nonce(self, account: int) -> int:
        return int(str(rpc(self.anvil.rpc_url, "eth_getTransactionCount",
                           [dev_address(account), "latest"])), 16)


@pytest.fixture(scope="module")
def diamond(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Diamond]:
    with Anvil() as chain:
        net = asyncio.run(deploy_double(chain.rpc_url))
        head = head_timestamp(chain.rpc_url)
        chain.increase_time(start_of_day(head) + DAY + HOUR - head)  # 01:00 UTC
        cli = Cli(tmp_path_factory.mktemp("operator-morpheus"), {
            "ETH_NODE_ADDRESS": chain.rpc_url, "MARKETPLACE_FLAVOR": "morpheus",
            "DIAMOND_CONTRACT_ADDRESS": net.diamond, "MOR_TOKEN_ADDRESS": net.mor,
            "WALLET_PRIVATE_KEY": dev_key(PROVIDER)})
        cli("provider", "register", "--endpoint", "127.0.0.1:9", "--stake", "100")
        model = cli("model", "register", "--name", MODEL, "--tags", "chat,small",
                    "--fee", "0.5")
        bid = cli("bid", "post", "--model", MODEL, "--price", str(PRICE))
        yield Diamond(chain, net, cli, line_value(model.stdout, "modelId"),
                      line_value(bid.stdout, "bidId"))


async def open_session(d: Diamond, seconds: int) -> Session:
    """The user's session on the module's bid, through the flavour's Python API: a
    stake the diamond itself sizes, an approval signed by the provider."""
    user = await d.market(USER)
    try:
        stake = await user.stake_for(PRICE, seconds)
        stamp = (await user.client.head())[1]
        while stamp in STAMPS:  # each approval distinct: the same bytes twice would revert
            stamp -= 1
        STAMPS.add(stamp)
        approval = Approval(to_bytes32(d.bid_id), user.client.chain_id, user.me,
                            stamp).encode()
        signature = sign_blob(Account.from_key(dev_key(PROVIDER)), approval)
        session_id, _ = await user.open_session(stake, approval, signature)
        return await user.get_session(session_id)
    finally:
        await user.client.close()


def by_id(earnings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in earnings["sessions"]}


# -- the market ------------------------------------------------------------------------------


async def test_the_registered_market_reads_back_with_the_flavour_and_real_counts(
        diamond: Diamond):
    cli = diamond.cli
    provider = cli.json("provider", "show")
    assert (provider["flavor"], provider["status"], provider["endpoint"]) == (
        "morpheus", "registered", "127.0.0.1:9")
    assert provider["stake"] == str(PROVIDER_STAKE)
    # the diamond's Provider keeps no counts: they come from its paged views
    assert provider["bids"] == [diamond.bid_id] and provider["activeBids"] == 1
    assert provider["sessionCount"] == 0
    shown = cli("provider", "show").stdout
    assert "morpheus (the Morpheus-Lumerin diamond)" in shown

    (model,) = cli.json("model", "list")
    assert (model["id"], model["name"], model["tags"], model["owner"]) == (
        diamond.model_id, MODEL, ["chat", "small"], dev_address(PROVIDER))
    assert model["activeBids"] == 1 and model["baseModelId"] is None  # not kept on chain
    assert model["stake"] == str(await diamond.read("model_min_stake"))
    market = await diamond.market()
    try:  # the fee reached the diamond (our records have no field for it)
        raw = await market.client.call(market.contract, "getModel", to_bytes32(model["id"]))
    finally:
        await market.client.close()
    assert raw[1] == MOR // 2
    (bid,) = cli.json("bid", "list", "--model", MODEL)
    assert (bid["id"], bid["pricePerSecond"], bid["modelName"]) == (
        diamond.bid_id, str(PRICE), MODEL)

    allowance = cli.json("wallet", "allowance")
    assert allowance["spender"] == diamond.net.diamond
    balance = cli.json("wallet", "balance", env=diamond.as_user)
    assert balance["flavor"] == "morpheus" and balance["address"] == dev_address(USER)
    assert balance["heldStakes"] == {"withdrawable": "0", "onHold": "0"}


def test_deploy_is_refused_in_the_morpheus_flavour(diamond: Diamond):
    out = diamond.cli("deploy", ok=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: deploy deploys our Marketplace (the native flavour), but MARKETPLACE_FLAVOR "
        "is morpheus: the diamond is deployed by its own project; set "
        "MARKETPLACE_FLAVOR=native to deploy ours"]


# -- early closes: the stake held until midnight ------------------------------------------------


async def test_an_early_disputed_close_holds_the_days_stake_and_the_providers_share(
        diamond: Diamond):
    """The provider does not answer (127.0.0.1:9): our own receipt, a dispute. The user
    gets the unused stake back now but for what today's 10 minutes are worth in stake;
    the provider's share of the day is held too."""
    session = await open_session(diamond, HOUR)
    before = await diamond.read("mor_balance", dev_address(USER))
    diamond.anvil.increase_time(600)
    closed = diamond.cli.json("session", "close", session.id, env=diamond.as_user)
    after = await diamond.read("mor_balance", dev_address(USER))
    diamond.closes[session.id] = closed

    onchain: Session = await diamond.read("get_session", session.id)
    share = (onchain.closed_at - onchain.opened_at) * PRICE
    assert closed["flavor"] == "morpheus" and closed["disputed"] is True
    assert closed["providerShare"] == str(share) and closed["providerEarned"] == "0"
    assert closed["providerHeld"] == str(share)
    assert after - before == int(closed["userRefund"])
    assert int(closed["userRefund"]) + int(closed["userHeld"]) + share == session.stake
    assert int(closed["held"]) == int(closed["userHeld"]) + share
    assert closed["releaseAt"] == start_of_day(onchain.closed_at) + DAY
    assert await diamond.read("held_stakes", dev_address(USER)) == (
        0, int(closed["userHeld"]))


async def test_an_early_close_with_the_providers_receipt_pays_it_at_once(diamond: Diamond):
    """A provider that answers session.report (served by this test): the close pays its
    whole share; only the user's stake of the day is held. Printed as plain text."""
    provider_key = dev_key(PROVIDER)
    server = RpcServer(Signer.from_key(provider_key))
    chain = await diamond.market()

    @server.method("session.report")
    async def report(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        receipt = Receipt(to_bytes32(params["sessionId"]), diamond.net.chain_id,
                          (await chain.client.head())[1], tps_x1000=20_000, ttft_ms=90).encode()
        signature = sign_blob(Account.from_key(provider_key), receipt)
        return {"receipt": "0x" + receipt.hex(), "signature": "0x" + signature.hex()}

    port = await server.start()
    try:
        code, _, err = await diamond.cli.run_async("provider", "update", "--endpoint",
                                                   f"127.0.0.1:{port}")
        assert code == 0, err
        session = await open_session(diamond, HOUR)
        diamond.anvil.increase_time(300)
        paid_before = await chain.mor_balance(dev_address(PROVIDER))
        _, held_before = await chain.held_stakes(dev_address(USER))
        code, out, err = await diamond.cli.run_async("session", "close", session.id,
                                                     env=diamond.as_user)
        assert code == 0, err
        paid = await chain.mor_balance(dev_address(PROVIDER)) - paid_before
        _, held_after = await chain.held_stakes(dev_address(USER))
    finally:
        await server.stop()
        await chain.client.close()
        await diamond.cli.run_async("provider", "update", "--endpoint", "127.0.0.1:9")

    onchain: Session = await diamond.read("get_session", session.id)
    share = (onchain.closed_at - onchain.opened_at) * PRICE
    assert paid == share and not onchain.disputed
    user_held = held_after - held_before
    assert user_held > 0
    lines = out.splitlines()
    assert lines[0] == f"session {session.id} closed with the provider's signed receipt"
    value = {ln.split("  ")[0]: ln.split("  ", 1)[1].strip() for ln in lines[1:-1]}
    assert value["provider share"] == value["provider paid now"] == with_wei(share)
    assert value["held"].startswith(f"{with_wei(user_held)} of the stake, until the next "
                                    "UTC midnight")
    assert value["held"].endswith("then `proxy-router wallet withdraw-held`")
    assert value["provider held"] == with_wei(0)
    diamond.closes[session.id] = {"userHeld": str(user_held)}


async def test_before_midnight_nothing_is_claimed_or_withdrawn_and_no_transaction_is_sent(
        diamond: Diamond):
    disputed, undisputed = diamond.closes
    provider_nonce, user_nonce = diamond.nonce(PROVIDER), diamond.nonce(USER)
    # The diamond itself would revert a claim of the session paid at close today.
    provider = await diamond.market(PROVIDER)
    try:
        with pytest.raises(ContractPanicError, match="0x11"):
            await provider.contract.functions.claimForProvider(to_bytes32(undisputed)).call(
                {"from": dev_address(PROVIDER)})
    finally:
        await provider.client.close()

    claimed = diamond.cli.json("earnings", "--claim")
    assert claimed["flavor"] == "morpheus" and claimed["claimed"] == []
    sessions = by_id(claimed)
    assert sessions[undisputed]["state"] == "paid" and sessions[undisputed]["held"] == "0"
    midnight = diamond.closes[disputed]["releaseAt"]
    assert sessions[disputed]["state"].startswith("held until ")
    assert sessions[disputed]["held"] == diamond.closes[disputed]["providerHeld"]
    assert sessions[disputed]["claimableAmount"] == "0" and claimed["claimable"] == "0"
    assert "nothing to claim" in diamond.cli("earnings", "--claim").stdout

    on_hold = sum(int(c["userHeld"]) for c in diamond.closes.values())
    out = diamond.cli("wallet", "withdraw-held", env=diamond.as_user, ok=False)
    assert out.returncode == 1
    assert "MOR held, withdrawable  0 MOR (0 wei)" in out.stdout
    assert f"({on_hold} wei) (until the next UTC midnight)" in out.stdout
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: nothing to withdraw yet: ")
    assert line.endswith(f"{with_wei(on_hold)} is on hold until {when(midnight)}")
    assert (diamond.nonce(PROVIDER), diamond.nonce(USER)) == (provider_nonce, user_nonce)
    balance = diamond.cli.json("wallet", "balance", env=diamond.as_user)
    assert balance["heldStakes"] == {"withdrawable": "0", "onHold": str(on_hold)}


# -- a session its user never closed ----------------------------------------------------------


async def test_a_session_never_closed_is_claimed_after_its_end_exactly_as_claimable_says(
        diamond: Diamond):
    session = await open_session(diamond, 600)
    diamond.anvil.increase_time(session.ends_at - diamond.now() + 1)  # still the same day
    listed = {s["id"]: s for s in diamond.cli.json("session", "list", env=diamond.as_user)}
    assert listed[session.id]["status"] == "expired"

    provider = await diamond.market(PROVIDER)
    try:
        owed = provider.claimable(await provider.get_session(session.id), diamond.now())
        assert owed == (session.ends_at - session.opened_at) * PRICE
        before = await provider.mor_balance(dev_address(PROVIDER))
        claimed = diamond.cli.json("earnings", "--claim")
        received = await provider.mor_balance(dev_address(PROVIDER)) - before
    finally:
        await provider.client.close()
    # only this one: the sessions closed early today owe nothing claimable yet
    assert [(c["sessionId"], c["amount"]) for c in claimed["claimed"]] == [
        (session.id, str(owed))]
    assert received == owed
    entry = by_id(claimed)[session.id]
    assert (entry["state"], entry["claimedAmount"], entry["claimableAmount"]) == (
        "paid", str(owed), "0")


# -- after midnight -----------------------------------------------------------------------------


async def test_after_midnight_the_held_stake_comes_back_to_the_wei(diamond: Diamond):
    disputed = next(iter(diamond.closes))
    midnight = diamond.closes[disputed]["releaseAt"]
    diamond.anvil.increase_time(midnight - diamond.now() + 60)
    held = sum(int(c["userHeld"]) for c in diamond.closes.values())
    assert await diamond.read("held_stakes", dev_address(USER)) == (held, 0)
    before = await diamond.read("mor_balance", dev_address(USER))

    out = diamond.cli("wallet", "withdraw-held", env=diamond.as_user)
    received = await diamond.read("mor_balance", dev_address(USER)) - before
    assert received == held
    assert f"withdrew {with_wei(held)}" in out.stdout.splitlines()
    assert out.stdout.splitlines()[-1].startswith("tx 0x")
    balance = diamond.cli.json("wallet", "balance", env=diamond.as_user)
    assert balance["heldStakes"] == {"withdrawable": "0", "onHold": "0"}
    again = diamond.cli("wallet", "withdraw-held", env=diamond.as_user, ok=False)
    assert (again.returncode, again.stderr.strip()) == (
        1, "error: nothing to withdraw yet: the diamond holds no stake of this wallet")


async def test_after_midnight_the_disputed_share_is_claimed(diamond: Diamond):
    disputed = next(iter(diamond.closes))
    share = int(diamond.closes[disputed]["providerHeld"])
    before = await diamond.read("mor_balance", dev_address(PROVIDER))
    claimed = diamond.cli.json("earnings", "--claim")
    assert [(c["sessionId"], c["amount"]) for c in claimed["claimed"]] == [
        (disputed, str(share))]
    assert await diamond.read("mor_balance", dev_address(PROVIDER)) - before == share
    assert all(s["state"] == "paid" for s in claimed["sessions"])
    assert (claimed["held"], claimed["claimable"]) == ("0", "0")


# -- leaving ------------------------------------------------------------------------------------


async def test_the_provider_leaves_and_its_periods_earnings_stay_staked(diamond: Diamond):
    cli = diamond.cli
    earned = int(cli.json("earnings")["paid"])
    assert cli("bid", "delete", diamond.bid_id).stdout.startswith(
        f"bid {diamond.bid_id} deleted")
    out = cli("model", "deregister", diamond.model_id)
    assert "stake 0.1 MOR (100000000000000000 wei) returned" in out.stdout
    before = await diamond.read("mor_balance", dev_address(PROVIDER))
    out = cli("provider", "deregister")
    returned = await diamond.read("mor_balance", dev_address(PROVIDER)) - before
    assert returned == PROVIDER_STAKE - earned
    assert f"stake {with_wei(returned)} returned" in out.stdout
    assert f"stake {with_wei(earned)} stays staked" in out.stdout
    shown = cli.json("provider", "show")
    assert (shown["status"], shown["stake"], shown["sessionCount"]) == (
        "deregistered", str(earned), 3)
