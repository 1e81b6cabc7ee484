"""providerRegister / providerDeregister: stake, endpoint, lifecycle, refunds."""

from __future__ import annotations

from proxy_router.chain.marketplace import Marketplace

from .helpers import (
    MOR,
    PROVIDER_STAKE,
    Ledger,
    addr,
    as_view,
    latest_timestamp,
    onboard,
    reverts,
    same_address,
)

MIN_STAKE = 2 * MOR // 10


async def test_register_provider_with_the_minimum_stake_records_it(provider: Marketplace) -> None:
    assert await provider.param("providerMinStake") == MIN_STAKE
    ledger = await Ledger(provider, provider=addr(provider)).open()

    tx = await provider.register_provider(MIN_STAKE, "10.0.0.1:3333")

    assert [name for name, _ in tx.events] == ["ProviderRegistered", "Transfer"]
    assert same_address(tx.event("ProviderRegistered")["provider"], addr(provider))
    info = await provider.get_provider(addr(provider))
    assert info.endpoint == "10.0.0.1:3333"
    assert info.stake == MIN_STAKE
    assert info.created_at == await latest_timestamp(provider)
    assert info.active_bids == 0
    assert info.session_count == 0
    assert info.is_deleted is False
    assert await ledger.deltas() == {"contract": MIN_STAKE, "fee_recipient": 0,
                                     "provider": -MIN_STAKE}


async def test_register_provider_rejects_a_stake_below_the_minimum(provider: Marketplace) -> None:
    with reverts("StakeTooLow", required=MIN_STAKE, given=MIN_STAKE - 1):
        await provider.register_provider(MIN_STAKE - 1, "10.0.0.1:3333")


async def test_register_provider_rejects_a_stake_that_would_overflow_uint128(
    provider: Marketplace,
) -> None:
    await provider.register_provider(PROVIDER_STAKE, "10.0.0.1:3333")
    too_much = 2**128 - PROVIDER_STAKE
    with reverts("AmountTooLarge", amount=too_much):
        await provider.client.transact(provider.contract, "providerRegister", too_much, "h:1")


async def test_register_provider_rejects_an_empty_endpoint(provider: Marketplace) -> None:
    with reverts("EmptyEndpoint"):
        await provider.register_provider(PROVIDER_STAKE, "")


async def test_register_provider_without_allowance_reverts_with_the_token_error(
    provider: Marketplace,
) -> None:
    # Call the contract directly: the Marketplace helper would approve first.
    with reverts("ERC20InsufficientAllowance", spender=provider.address, allowance=0,
                 needed=PROVIDER_STAKE):
        await provider.client.transact(provider.contract, "providerRegister", PROVIDER_STAKE,
                                       "10.0.0.1:3333")


async def test_register_provider_beyond_the_balance_reverts_with_the_token_error(
    provider: Marketplace,
) -> None:
    balance = await provider.mor_balance(addr(provider))
    with reverts("ERC20InsufficientBalance", sender=addr(provider), balance=balance,
                 needed=balance + 1):
        await provider.register_provider(balance + 1, "10.0.0.1:3333")


async def test_registered_provider_tops_up_its_stake(provider: Marketplace) -> None:
    await provider.register_provider(PROVIDER_STAKE, "10.0.0.1:3333")
    created = (await provider.get_provider(addr(provider))).created_at
    ledger = await Ledger(provider, provider=addr(provider)).open()

    tx = await provider.register_provider(5 * MOR, "10.0.0.1:3333")

    assert same_address(tx.event("ProviderRegistered")["provider"], addr(provider))
    info = await provider.get_provider(addr(provider))
    assert info.stake == PROVIDER_STAKE + 5 * MOR
    assert info.created_at == created
    assert await ledger.deltas() == {"contract": 5 * MOR, "fee_recipient": 0,
                                     "provider": -5 * MOR}


async def test_registered_provider_changes_its_endpoint_without_adding_stake(
    provider: Marketplace,
) -> None:
    await provider.register_provider(PROVIDER_STAKE, "10.0.0.1:3333")
    ledger = await Ledger(provider, provider=addr(provider)).open()

    tx = await provider.register_provider(0, "new-host.example:4444")

    assert same_address(tx.event("ProviderRegistered")["provider"], addr(provider))
    info = await provider.get_provider(addr(provider))
    assert info.endpoint == "new-host.example:4444"
    assert info.stake == PROVIDER_STAKE
    assert await ledger.deltas() == {"contract": 0, "fee_recipient": 0, "provider": 0}


async def test_deregister_refunds_the_whole_stake_to_the_wei(provider: Marketplace) -> None:
    odd_stake = PROVIDER_STAKE + 123_456_789
    await provider.register_provider(odd_stake, "10.0.0.1:3333")
    await provider.register_provider(7, "10.0.0.1:3333")  # a top-up of 7 wei
    ledger = await Ledger(provider, provider=addr(provider)).open()

    tx = await provider.deregister_provider()

    assert same_address(tx.event("ProviderDeregistered")["provider"], addr(provider))
    assert await ledger.deltas() == {"contract": -(odd_stake + 7), "fee_recipient": 0,
                                     "provider": odd_stake + 7}
    info = await provider.get_provider(addr(provider))
    assert info.is_deleted is True
    assert info.stake == 0


async def test_deregistered_provider_can_register_again_with_a_new_minimum_stake(
    provider: Marketplace,
) -> None:
    await provider.register_provider(PROVIDER_STAKE, "10.0.0.1:3333")
    created = (await provider.get_provider(addr(provider))).created_at
    await provider.deregister_provider()

    with reverts("StakeTooLow", required=MIN_STAKE, given=0):
        await provider.register_provider(0, "10.0.0.1:3333")
    tx = await provider.register_provider(MIN_STAKE, "10.0.0.2:3333")

    assert same_address(tx.event("ProviderRegistered")["provider"], addr(provider))
    info = await provider.get_provider(addr(provider))
    assert info.is_deleted is False
    assert info.stake == MIN_STAKE
    assert info.endpoint == "10.0.0.2:3333"
    assert info.created_at == created  # first registration is kept


async def test_deregister_rejects_a_provider_with_active_bids(provider: Marketplace) -> None:
    await onboard(provider)
    with reverts("ProviderHasActiveBids"):
        await provider.deregister_provider()


async def test_deregister_rejects_an_address_that_never_registered(
    provider: Marketplace,
) -> None:
    with reverts("ProviderNotRegistered"):
        await provider.deregister_provider()


async def test_deregister_rejects_an_already_deregistered_provider(
    provider: Marketplace,
) -> None:
    await provider.register_provider(PROVIDER_STAKE, "10.0.0.1:3333")
    await provider.deregister_provider()
    with reverts("ProviderNotRegistered"):
        await provider.deregister_provider()


async def test_unknown_provider_reads_as_a_zeroed_struct(provider: Marketplace) -> None:
    info = await provider.get_provider(addr(provider))
    assert as_view(info) == {"endpoint": "", "stake": 0, "createdAt": 0, "activeBids": 0,
                    "sessionCount": 0, "isDeleted": False}
