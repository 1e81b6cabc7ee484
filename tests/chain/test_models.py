"""modelRegister / modelDeregister: id derivation, updates, stake refunds, ownership."""

from __future__ import annotations

from proxy_router.chain.marketplace import Marketplace

from .helpers import (
    MODEL_STAKE,
    MOR,
    Ledger,
    addr,
    as_view,
    hex32,
    latest_timestamp,
    model_id_of,
    onboard,
    random_base_model_id,
    register_model,
    reverts,
    same_address,
)


async def test_model_id_is_keccak_of_owner_and_base_model_id(provider: Marketplace,
                                                             other: Marketplace) -> None:
    base = random_base_model_id()

    mine, tx = await register_model(provider, base_model_id=base)
    theirs, _ = await register_model(other, base_model_id=base)

    assert mine == model_id_of(addr(provider), base)
    assert theirs == model_id_of(addr(other), base)
    assert mine != theirs
    event = tx.event("ModelRegistered")
    assert same_address(event["owner"], addr(provider))
    assert hex32(event["modelId"]) == mine


async def test_register_model_records_its_fields_and_pulls_the_stake(
    provider: Marketplace,
) -> None:
    base = random_base_model_id()
    ledger = await Ledger(provider, owner=addr(provider)).open()

    model_id, _ = await register_model(provider, base_model_id=base, stake=MODEL_STAKE,
                                       name="qwen-7b", tags=["chat", "code"],
                                       ipfs_cid=b"\x07" * 32)

    assert as_view(await provider.get_model(model_id)) == {
        "owner": addr(provider),
        "baseModelId": hex32(base),
        "ipfsCID": hex32(b"\x07" * 32),
        "stake": MODEL_STAKE,
        "name": "qwen-7b",
        "tags": ["chat", "code"],
        "createdAt": await latest_timestamp(provider),
        "activeBids": 0,
        "isDeleted": False,
    }
    assert await ledger.deltas() == {"contract": MODEL_STAKE, "fee_recipient": 0,
                                     "owner": -MODEL_STAKE}


async def test_registering_the_same_base_model_again_updates_it_and_adds_stake(
    provider: Marketplace,
) -> None:
    base = random_base_model_id()
    model_id, _ = await register_model(provider, base_model_id=base, name="v1", tags=["a"])
    created = (await provider.get_model(model_id)).created_at

    again, tx = await register_model(provider, base_model_id=base, stake=MOR, name="v2",
                                     tags=["b", "c"], ipfs_cid=b"\x02" * 32)

    assert again == model_id
    assert hex32(tx.event("ModelRegistered")["modelId"]) == model_id
    model = await provider.get_model(model_id)
    assert (model.name, model.tags, model.ipfs_cid) == ("v2", ("b", "c"),
                                                                 hex32(b"\x02" * 32))
    assert model.stake == MODEL_STAKE + MOR
    assert model.created_at == created


async def test_register_model_rejects_a_stake_below_the_minimum(provider: Marketplace) -> None:
    with reverts("StakeTooLow", required=MODEL_STAKE, given=MODEL_STAKE - 1):
        await register_model(provider, stake=MODEL_STAKE - 1)


async def test_register_model_rejects_a_stake_that_would_overflow_uint128(
    provider: Marketplace,
) -> None:
    with reverts("AmountTooLarge", amount=2**128):
        await provider.client.transact(provider.contract, "modelRegister",
                                       random_base_model_id(), b"\x00" * 32, 2**128, "m", [])


async def test_register_model_rejects_an_empty_name(provider: Marketplace) -> None:
    with reverts("EmptyModelName"):
        await register_model(provider, name="")


async def test_register_model_without_allowance_reverts_with_the_token_error(
    provider: Marketplace,
) -> None:
    with reverts("ERC20InsufficientAllowance", needed=MODEL_STAKE):
        await provider.client.transact(provider.contract, "modelRegister",
                                       random_base_model_id(), b"\x00" * 32, MODEL_STAKE,
                                       "m", [])


async def test_deregister_model_refunds_its_whole_stake(provider: Marketplace) -> None:
    model_id, _ = await register_model(provider, stake=MODEL_STAKE + 99)
    ledger = await Ledger(provider, owner=addr(provider)).open()

    tx = await provider.client.transact(provider.contract, "modelDeregister",
                                        bytes.fromhex(model_id[2:]))

    event = tx.event("ModelDeregistered")
    assert same_address(event["owner"], addr(provider))
    assert hex32(event["modelId"]) == model_id
    assert await ledger.deltas() == {"contract": -(MODEL_STAKE + 99), "fee_recipient": 0,
                                     "owner": MODEL_STAKE + 99}
    model = await provider.get_model(model_id)
    assert model.is_deleted is True
    assert model.stake == 0


async def test_deregistered_model_can_be_registered_again_with_a_new_stake(
    provider: Marketplace,
) -> None:
    base = random_base_model_id()
    model_id, _ = await register_model(provider, base_model_id=base)
    await provider.client.transact(provider.contract, "modelDeregister",
                                   bytes.fromhex(model_id[2:]))

    with reverts("StakeTooLow", required=MODEL_STAKE, given=0):
        await register_model(provider, base_model_id=base, stake=0)
    again, _ = await register_model(provider, base_model_id=base)

    assert again == model_id
    model = await provider.get_model(model_id)
    assert model.is_deleted is False
    assert model.stake == MODEL_STAKE


async def test_deregister_model_rejects_anyone_but_its_owner(provider: Marketplace,
                                                             other: Marketplace) -> None:
    model_id, _ = await register_model(provider)
    with reverts("NotModelOwner"):
        await other.client.transact(other.contract, "modelDeregister",
                                    bytes.fromhex(model_id[2:]))


async def test_deregister_model_rejects_a_model_with_active_bids(provider: Marketplace) -> None:
    offer = await onboard(provider)
    with reverts("ModelHasActiveBids"):
        await provider.client.transact(provider.contract, "modelDeregister",
                                       bytes.fromhex(offer.model_id[2:]))


async def test_deregister_model_rejects_an_unknown_model(provider: Marketplace) -> None:
    unknown = random_base_model_id()
    with reverts("ModelNotActive", modelId=hex32(unknown)):
        await provider.client.transact(provider.contract, "modelDeregister", unknown)


async def test_deregister_model_rejects_an_already_deregistered_model(
    provider: Marketplace,
) -> None:
    model_id, _ = await register_model(provider)
    await provider.client.transact(provider.contract, "modelDeregister",
                                   bytes.fromhex(model_id[2:]))
    with reverts("ModelNotActive", modelId=model_id):
        await provider.client.transact(provider.contract, "modelDeregister",
                                       bytes.fromhex(model_id[2:]))
