"""``make demo``: a paid chat through the devnet, then the settlement to the wei."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
from eth_utils import keccak

from proxy_router.chain.client import ChainClient
from proxy_router.chain.marketplace import Marketplace
from proxy_router.dev.devnet import Devnet, DevnetState
from proxy_router.dev.scripting import fmt_mor

PROMPT = "In one sentence, what is a blockchain?"


async def _balances(market: Marketplace, state: DevnetState) -> dict[str, int]:
    return {"user": await market.mor_balance(state.user_address),
            "provider": await market.mor_balance(state.provider_address),
            "marketplace": await market.mor_balance(state.marketplace_address)}


async def _open_gas(client: ChainClient, state: DevnetState, session_id: str) -> int:
    topic = "0x" + keccak(text="SessionOpened(address,bytes32,address)").hex()
    logs = await client.w3.eth.get_logs({"address": state.marketplace_address,  # type: ignore[typeddict-item]
                                         "fromBlock": 0,
                                         "topics": [topic, None, session_id]})
    receipt = await client.w3.eth.get_transaction_receipt(logs[0]["transactionHash"])
    return int(receipt["gasUsed"])


async def _chat(state: DevnetState) -> tuple[str, str]:
    body = {"model": state.model_name, "stream": True, "max_tokens": 48,
            "messages": [{"role": "user", "content": PROMPT}]}
    text = []
    async with aiohttp.ClientSession() as http, http.post(
            state.consumer_url + "/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"chat failed: {resp.status} {await resp.text()}")
        session_id = resp.headers["X-Session-Id"]
        async for line in resp.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content") or ""
                text.append(piece)
                print(piece, end="", flush=True)
    print()
    return "".join(text), session_id


async def _demo(state: DevnetState) -> int:
    client = await ChainClient.connect(state.rpc_url)
    market = Marketplace(client, state.marketplace_address, state.mor_token_address)
    try:
        before = await _balances(market, state)
        print(f"\nuser> {PROMPT}\n{state.model_name}> ", end="", flush=True)
        answer, session_id = await _chat(state)
        if not answer.strip():
            print("the model returned no text", file=sys.stderr)
            return 1
        async with aiohttp.ClientSession() as http, http.post(
                f"{state.consumer_base}/blockchain/sessions/{session_id}/close",
                headers=state.auth()) as resp:
            settlement: dict[str, Any] = await resp.json()
            if resp.status != 200:
                print(f"close failed: {settlement}", file=sys.stderr)
                return 1
        after = await _balances(market, state)
        open_gas = await _open_gas(client, state, session_id)
    finally:
        await client.close()

    stake, paid = int(settlement["stake"]), int(settlement["providerEarned"])
    refund, held = int(settlement["userRefund"]), int(settlement["held"])
    delta = {k: after[k] - before[k] for k in after}
    adds_up = (stake == paid + refund + held and delta["user"] == -paid - held
               and delta["provider"] == paid - held and delta["marketplace"] == held)
    print(f"\nsession {session_id} settled in tx {settlement['tx']}")
    print(f"  escrowed            {fmt_mor(stake):>24}  ({stake} wei)")
    print(f"  paid to provider    {fmt_mor(paid):>24}  ({paid} wei)")
    print(f"  refunded to user    {fmt_mor(refund):>24}  ({refund} wei)")
    print(f"  held (dispute)      {fmt_mor(held):>24}  ({held} wei)")
    print(f"  gas: openSession {open_gas}, closeSession {settlement['gasUsed']}")
    print(f"  balance changes: user {delta['user']} wei, provider {delta['provider']} wei, "
          f"marketplace {delta['marketplace']} wei")
    print(f"  escrow in = paid + refunded + held, to the wei: {'yes' if adds_up else 'NO'}")
    return 0 if adds_up else 1


def run_demo(net: Devnet, root: Path) -> int:
    reuse = (root / "state.json").exists()
    state = DevnetState.load(root) if reuse else net.up()
    try:
        return asyncio.run(_demo(state))
    finally:
        if not reuse:
            print("stopping the devnet")
            net.down()
