"""The one place that talks to the chain: calls, signed transactions, receipts.

Everything that sends a transaction (scripts, provider, consumer, tests) goes
through ``ChainClient.transact`` so nonce handling, fee bumping and revert
decoding exist exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from eth_abi import decode as abi_decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import URI
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import (
    BadFunctionCallOutput,
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    TimeExhausted,
    Web3RPCError,
)
from web3.providers.persistent import WebSocketProvider
from web3.providers.rpc import AsyncHTTPProvider
from web3.types import RPCEndpoint

from proxy_router.chain.artifacts import error_selectors, event_topics, load_artifact
from proxy_router.chain.errors import (
    ChainError,
    ChainUnavailable,
    ContractReverted,
    TransactionFailed,
)
from proxy_router.redact import redact_text, redact_url

log = structlog.get_logger(__name__)

ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")
PANIC_SELECTOR = bytes.fromhex("4e487b71")
KNOWN_ARTIFACTS = ("Marketplace", "MorToken", "IMorpheusDiamond")
TRANSIENT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


def rpc_error_text(exc: Web3RPCError) -> str:
    """The node's own words for a JSON-RPC error (web3's text wraps the whole error dict)."""
    error = (exc.rpc_response or {}).get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return redact_text(error["message"])
    return redact_text(str(exc.message))


class FallbackHTTPProvider(AsyncHTTPProvider):
    """JSON-RPC over HTTP with several URLs: the first that answers wins.

    The URL that last answered stays preferred, so a dead primary costs one
    failed connect per request only until a fallback has answered once.
    """

    def __init__(self, urls: Sequence[str], timeout: float = 10.0, *, rounds: int = 3,
                 backoff_s: float = 0.25, max_retry_after_s: float = 30.0,
                 max_connections: int = 32,
                 trace_configs: Sequence[aiohttp.TraceConfig] = ()) -> None:
        """``max_connections``: the pool's limit (``ETH_NODE_MAX_CONNECTIONS``); a request
        over it waits, which ``trace_configs`` (``Metrics.pool_trace``) make visible."""
        if not urls:
            raise ValueError("at least one RPC URL is required")
        # web3 asks eth_chainId before every call and transaction (its validation); the
        # chain id cannot change under a URL, so it is asked once: a third of the requests
        # a rate-limited public RPC would otherwise see.
        super().__init__(urls[0], exception_retry_configuration=None,
                         cache_allowed_requests=True,
                         cacheable_requests={RPCEndpoint("eth_chainId")})
        self.urls = [URI(u) for u in urls]
        self.rounds = rounds
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.rate_limited = 0
        """Requests a node answered with 429 (for tests and metrics)."""
        self._cooling: dict[int, float] = {}  # URL index → monotonic time it may be asked again
        self._active = 0
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(3.0, timeout))
        self._session: aiohttp.ClientSession | None = None
        self.max_connections = max_connections
        self._trace_configs = list(trace_configs)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, trace_configs=self._trace_configs,
                connector=aiohttp.TCPConnector(limit=self.max_connections))
        return self._session

    async def _make_request(self, method: Any, request_data: bytes) -> bytes:
        """Every URL in turn, for ``rounds`` rounds with exponential backoff between.

        Retrying is safe: reads are idempotent and a re-sent signed transaction is
        the same transaction (the node answers "already known" at worst).
        """
        errors: list[str] = []
        for round_ in range(self.rounds):
            if round_:
                await asyncio.sleep(max(self.backoff_s * 2 ** (round_ - 1), self._cool_down()))
            body = await self._try_each(request_data, errors)
            if body is not None:
                return body
        raise ChainUnavailable("no RPC endpoint answered: " + "; ".join(errors[-len(self.urls):]))

    def _cool_down(self) -> float:
        """Seconds until the first rate-limited URL may be asked again (0: one is free)."""
        now = time.monotonic()
        if len(self._cooling) < len(self.urls) or not self._cooling:
            return 0.0
        return max(0.0, min(self._cooling.values()) - now)

    async def _try_each(self, request_data: bytes, errors: list[str]) -> bytes | None:
        now = time.monotonic()
        self._cooling = {i: t for i, t in self._cooling.items() if t > now}
        order = [(self._active + n) % len(self.urls) for n in range(len(self.urls))]
        # A node that said 429 is asked last until its Retry-After has passed.
        order.sort(key=lambda i: i in self._cooling)
        for index in order:
            url = self.urls[index]
            try:
                async with self._client().post(
                    url, data=request_data, headers=self.get_request_headers()
                ) as resp:
                    if resp.status == 429:
                        self._rate_limited(index, resp.headers.get("Retry-After"))
                        errors.append(redact_text(f"{url}: 429 Too Many Requests"))
                        continue
                    resp.raise_for_status()
                    body = await resp.read()
            except TRANSIENT_ERRORS as exc:
                errors.append(redact_text(f"{url}: {type(exc).__name__} {exc}".strip()))
                continue
            if index != self._active:
                log.warning("rpc_failover", to=redact_url(url))
                self._active = index
                self.endpoint_uri = url
            return body
        return None

    def _rate_limited(self, index: int, retry_after: str | None) -> None:
        try:
            wait = float(retry_after) if retry_after is not None else self.backoff_s
        except ValueError:  # an HTTP date: not worth parsing, back off the default
            wait = self.backoff_s
        wait = min(max(wait, self.backoff_s), self.max_retry_after_s)
        self.rate_limited += 1
        self._cooling[index] = time.monotonic() + wait
        log.warning("rpc_rate_limited", url=redact_url(self.urls[index]), retry_in_s=wait)

    async def disconnect(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass
class TxResult:
    tx_hash: str
    gas_used: int
    block_number: int
    status: int
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    contract_address: str | None = None
    effective_gas_price: int = 0

    def event(self, name: str) -> dict[str, Any]:
        """The arguments of the first event called ``name`` (KeyError if none)."""
        for event_name, args in self.events:
            if event_name == name:
                return args
        raise KeyError(f"transaction {self.tx_hash} emitted no {name} event")

    @property
    def fee_wei(self) -> int:
        return self.gas_used * self.effective_gas_price


@dataclass
class FeePolicy:
    """EIP-1559 fee choice and replacement of stuck transactions."""

    receipt_timeout_s: float = 60.0
    bump_percent: int = 15
    max_attempts: int = 5
    priority_fee_wei: int | None = None


class ChainClient:
    """An ``AsyncWeb3`` with one optional signer and a local nonce manager."""

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        chain_id: int,
        account: LocalAccount | None = None,
        fees: FeePolicy | None = None,
    ) -> None:
        self.w3 = w3
        self.chain_id = chain_id
        self.account = account
        self.fees = fees or FeePolicy()
        self._nonce: int | None = None
        self._send_lock = asyncio.Lock()
        self._contracts: dict[tuple[str, str], AsyncContract] = {}
        self.ws_url: str | None = None
        """A ws:// URL from the configuration, for new-head subscriptions."""

    @classmethod
    async def connect(
        cls,
        eth_rpc_urls: Sequence[str] | str,
        private_key: str | None = None,
        *,
        chain_id: int | None = None,
        timeout: float = 10.0,
        fees: FeePolicy | None = None,
        max_connections: int = 32,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> ChainClient:
        urls = ([u.strip() for u in eth_rpc_urls.split(",")] if isinstance(eth_rpc_urls, str)
                else eth_rpc_urls)
        http_urls = [u for u in urls if u.startswith(("http://", "https://"))]
        ws_urls = [u for u in urls if u.startswith(("ws://", "wss://"))]
        if http_urls:
            w3 = AsyncWeb3(FallbackHTTPProvider(http_urls, timeout=timeout,
                                                max_connections=max_connections,
                                                trace_configs=trace_configs))
        elif ws_urls:
            w3 = AsyncWeb3(WebSocketProvider(ws_urls[0]))  # type: ignore[arg-type]
            try:
                await w3.provider.connect()
            except (*TRANSIENT_ERRORS, Exception) as exc:
                raise ChainUnavailable(
                    redact_text(f"cannot connect to {ws_urls[0]}: {exc}")) from exc
        else:
            raise ChainError("no http(s):// or ws(s):// RPC URL configured")
        actual = await cls._guard(w3.eth.chain_id)
        if chain_id is not None and actual != chain_id:
            await w3.provider.disconnect()
            raise ChainError(f"RPC reports chain id {actual}, configuration says {chain_id}")
        account = Account.from_key(private_key) if private_key else None
        client = cls(w3, actual, account, fees)
        client.ws_url = ws_urls[0] if ws_urls else None
        return client

    async def close(self) -> None:
        await self.w3.provider.disconnect()

    @property
    def address(self) -> str:
        if self.account is None:
            raise ChainError("this client has no wallet key; it can only read")
        return self.account.address

    # -- contracts ---------------------------------------------------------

    def contract(self, name: str, address: str) -> AsyncContract:
        key = (name, address.lower())
        if key not in self._contracts:
            self._contracts[key] = self.w3.eth.contract(
                address=AsyncWeb3.to_checksum_address(address),
                abi=named_outputs(load_artifact(name).abi), decode_tuples=True,
            )
        return self._contracts[key]

    async def call(self, contract: AsyncContract, fn: str, *args: Any,
                   block: int | str = "latest") -> Any:
        try:
            return await getattr(contract.functions, fn)(*args).call(block_identifier=block)
        except ContractLogicError as exc:
            raise self._revert(exc) from None
        except BadFunctionCallOutput:
            raise ChainError(f"{fn} at {contract.address} returned nothing: no contract there "
                             "on this chain (check the address and the chain id)") from None
        except (*TRANSIENT_ERRORS, Web3RPCError) as exc:
            raise ChainUnavailable(redact_text(str(exc))) from exc

    async def head(self) -> tuple[int, int]:
        """The newest block's number and timestamp."""
        block = await self._guard(self.w3.eth.get_block("latest"))
        return int(block["number"]), int(block["timestamp"])

    async def deployment_block(self, address: str) -> int:
        """The block a contract was created in: the first with code at ``address``.

        Binary search over ``eth_getCode`` (about 25 reads for a 30M-block chain), so the
        index can start there instead of block 0; needs a node that keeps history."""
        w3 = self.w3
        target = AsyncWeb3.to_checksum_address(address)
        head = int(await self._guard(w3.eth.block_number))
        if not await self._guard(w3.eth.get_code(target, head)):
            raise ChainError(f"no contract at {address} on chain {self.chain_id}")
        low, high = 0, head  # invariant: code at `high`
        try:
            while low < high:
                middle = (low + high) // 2
                if await self._guard(w3.eth.get_code(target, middle)):
                    high = middle
                else:
                    low = middle + 1
        except ChainUnavailable as exc:
            raise ChainError(f"cannot find the deployment block of {address} ({exc}); "
                             "set ETH_NODE_START_BLOCK or DEPLOYMENT_FILE") from None
        return high

    async def deploy(self, name: str, *args: Any) -> TxResult:
        art = load_artifact(name)
        factory = self.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        return await self._send(factory.constructor(*args), decode_with=name)

    async def transact(self, contract: AsyncContract, fn: str, *args: Any,
                       value: int = 0, gas: int | None = None) -> TxResult:
        name = self._artifact_name(contract)
        return await self._send(
            getattr(contract.functions, fn)(*args), decode_with=name, value=value,
            gas=gas, to=contract.address,
        )

    # -- transactions ------------------------------------------------------

    async def _send(self, fn: Any, *, decode_with: str, value: int = 0,
                    gas: int | None = None, to: str | None = None) -> TxResult:
        account = self.account
        if account is None:
            raise ChainError("this client has no wallet key; it cannot send transactions")
        base: dict[str, Any] = {"from": account.address, "value": value, "chainId": self.chain_id}
        try:
            if gas is None:
                # estimate_gas runs the call first: a revert surfaces here, before we sign.
                # Against "pending", the block the tx goes into: "latest" carries the last
                # block's timestamp, hours old on an idle chain (approvals would look
                # "from the future" and their TTL checks would be off).
                gas = int(await fn.estimate_gas(base, block_identifier="pending") * 1.2) \
                    + 10_000
            tx = await fn.build_transaction({**base, "gas": gas, "nonce": 0,
                                             **await self._fees()})
        except ContractLogicError as exc:
            raise self._revert(exc) from None
        except TRANSIENT_ERRORS as exc:
            raise ChainUnavailable(redact_text(str(exc))) from exc

        tx_hash = await self._sign_and_send(tx)
        receipt = await self._await_receipt(tx, tx_hash)
        if receipt["status"] != 1:
            raise await self._replay_failure(tx, receipt)
        return self._result(receipt, decode_with)

    async def send_value(self, to: str, amount: int) -> TxResult:
        """A plain ETH transfer, with the same nonce, fee and receipt handling as calls."""
        account = self.account
        if account is None:
            raise ChainError("this client has no wallet key; it cannot send transactions")
        base: dict[str, Any] = {"from": account.address, "to": AsyncWeb3.to_checksum_address(to),
                                "value": amount, "chainId": self.chain_id}
        try:
            gas = int(await self.w3.eth.estimate_gas(base))  # type: ignore[arg-type]
            tx = {**base, "gas": gas, **await self._fees()}
        except TRANSIENT_ERRORS as exc:
            raise ChainUnavailable(redact_text(str(exc))) from exc
        except Web3RPCError as exc:  # e.g. "insufficient funds for gas * price + value"
            raise TransactionFailed(f"node refused the transfer: {rpc_error_text(exc)}") from None
        tx_hash = await self._sign_and_send(tx)
        return self._result(await self._await_receipt(tx, tx_hash), "MorToken")

    async def _fees(self, bump_percent: int = 0) -> dict[str, int]:
        block = await self.w3.eth.get_block("latest")
        base_fee = int(block.get("baseFeePerGas", 0))
        if self.fees.priority_fee_wei is not None:
            tip = self.fees.priority_fee_wei
        else:
            try:
                tip = int(await self.w3.eth.max_priority_fee)
            except Web3RPCError:
                tip = 1_000_000_000
        tip = max(tip, 1)
        factor = 100 + bump_percent
        return {"maxPriorityFeePerGas": tip * factor // 100,
                "maxFeePerGas": (2 * base_fee + tip) * factor // 100}

    async def _next_nonce(self, refresh: bool = False) -> int:
        assert self.account is not None
        if self._nonce is None or refresh:
            chain_nonce = await self.w3.eth.get_transaction_count(self.account.address, "pending")
            self._nonce = max(chain_nonce, self._nonce or 0) if not refresh else chain_nonce
        return self._nonce

    async def _sign_and_send(self, tx: dict[str, Any]) -> HexBytes:
        """Assign a nonce and broadcast; recovers once from a nonce the node rejects."""
        assert self.account is not None
        async with self._send_lock:
            for attempt in range(2):
                tx["nonce"] = await self._next_nonce(refresh=attempt > 0)
                signed = self.account.sign_transaction(tx)
                try:
                    tx_hash = await self.w3.eth.send_raw_transaction(signed.raw_transaction)
                except Web3RPCError as exc:
                    msg = str(exc).lower()
                    if "already known" in msg or "already imported" in msg:
                        # Our earlier broadcast of this very transaction got through.
                        self._nonce = tx["nonce"] + 1
                        return HexBytes(signed.hash)
                    if attempt == 0 and "nonce" in msg:
                        log.warning("nonce_resync", error=str(exc))
                        continue
                    raise TransactionFailed(
                        f"node rejected the transaction: {rpc_error_text(exc)}") from None
                except TRANSIENT_ERRORS as exc:
                    self._nonce = None
                    raise ChainUnavailable(redact_text(str(exc))) from exc
                self._nonce = tx["nonce"] + 1
                return tx_hash
        raise TransactionFailed("could not find a usable nonce")

    async def _await_receipt(self, tx: dict[str, Any], tx_hash: HexBytes) -> Any:
        """Wait for inclusion; re-broadcast with higher fees when it is stuck."""
        assert self.account is not None
        hashes = [tx_hash]
        for attempt in range(1, self.fees.max_attempts + 1):
            deadline = time.monotonic() + self.fees.receipt_timeout_s
            while time.monotonic() < deadline:
                for h in hashes:
                    try:
                        return await self.w3.eth.wait_for_transaction_receipt(
                            h, timeout=min(2.0, self.fees.receipt_timeout_s), poll_latency=0.05
                        )
                    except TimeExhausted:
                        continue
            if attempt == self.fees.max_attempts:
                break
            bumped = {**tx, **await self._fees(self.fees.bump_percent * attempt)}
            bumped["maxFeePerGas"] = max(
                bumped["maxFeePerGas"], tx["maxFeePerGas"] * (100 + self.fees.bump_percent) // 100
            )
            bumped["maxPriorityFeePerGas"] = max(
                bumped["maxPriorityFeePerGas"],
                tx["maxPriorityFeePerGas"] * (100 + self.fees.bump_percent) // 100,
            )
            log.warning("tx_replace", nonce=tx["nonce"], attempt=attempt,
                        max_fee=bumped["maxFeePerGas"])
            try:
                hashes.append(await self.w3.eth.send_raw_transaction(
                    self.account.sign_transaction(bumped).raw_transaction))
                tx = bumped
            except Web3RPCError as exc:
                # "nonce too low" means one of the earlier broadcasts was mined.
                log.info("tx_replace_rejected", error=str(exc))
        raise TransactionFailed(f"transaction {tx_hash.to_0x_hex()} was not mined in time")

    async def _replay_failure(self, tx: dict[str, Any], receipt: Any) -> ChainError:
        call = {k: tx[k] for k in ("from", "to", "data", "value") if k in tx}
        call.setdefault("from", self.address)
        try:
            await self.w3.eth.call(call, receipt["blockNumber"] - 1)  # type: ignore[arg-type]
        except ContractLogicError as exc:
            err = self._revert(exc)
            err.tx_hash = receipt["transactionHash"].to_0x_hex()
            return err
        except Exception:
            pass
        return TransactionFailed(
            f"transaction {receipt['transactionHash'].to_0x_hex()} reverted (no reason)"
        )

    def _result(self, receipt: Any, decode_with: str) -> TxResult:
        events: list[tuple[str, dict[str, Any]]] = []
        for raw in receipt["logs"]:
            if not raw["topics"]:
                continue
            for name in (decode_with, *KNOWN_ARTIFACTS):
                event_name = event_topics(name).get(bytes(raw["topics"][0]))
                if event_name is None:
                    continue
                contract = self.w3.eth.contract(abi=load_artifact(name).abi)
                decoded = getattr(contract.events, event_name)().process_log(raw)
                events.append((event_name, dict(decoded["args"])))
                break
        return TxResult(
            tx_hash=receipt["transactionHash"].to_0x_hex(),
            gas_used=int(receipt["gasUsed"]),
            block_number=int(receipt["blockNumber"]),
            status=int(receipt["status"]),
            events=events,
            contract_address=receipt.get("contractAddress"),
            effective_gas_price=int(receipt.get("effectiveGasPrice", 0)),
        )

    # -- errors ------------------------------------------------------------

    def _artifact_name(self, contract: AsyncContract) -> str:
        for (name, address), known in self._contracts.items():
            if known is contract or address == contract.address.lower():
                return name
        return KNOWN_ARTIFACTS[0]

    @staticmethod
    def _revert(exc: ContractLogicError) -> ContractReverted:
        return decode_revert(exc.data, fallback=exc.message or str(exc),
                             panic=isinstance(exc, ContractPanicError),
                             custom=isinstance(exc, ContractCustomError))

    @staticmethod
    async def _guard(awaitable: Any) -> Any:
        try:
            return await awaitable
        except (*TRANSIENT_ERRORS, Web3RPCError) as exc:  # down, or refusing (e.g. 429)
            raise ChainUnavailable(redact_text(str(exc))) from exc


def named_outputs(abi: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ABI with every unnamed output of a multi-output function named ``out<i>``.

    web3's tuple decoding keys outputs by name, so two unnamed ones (the diamond's
    ``(bytes32[], uint256)`` pages) collapse into the last; names change no selector."""
    out = []
    for item in abi:
        outputs = item.get("outputs") or []
        if item.get("type") == "function" and len(outputs) > 1 and any(
                not o.get("name") for o in outputs):
            item = {**item, "outputs": [{**o, "name": o.get("name") or f"out{i}"}
                                        for i, o in enumerate(outputs)]}
        out.append(item)
    return out


def decode_revert(data: Any, *, fallback: str = "execution reverted", panic: bool = False,
                  custom: bool = False) -> ContractReverted:
    """Turn revert data into ``ContractReverted`` with the error's name and arguments."""
    if isinstance(data, dict):
        data = data.get("data")
    raw = bytes(HexBytes(data)) if isinstance(data, str) and data.startswith("0x") else b""
    selector, body = raw[:4], raw[4:]
    if selector == ERROR_STRING_SELECTOR:
        (message,) = abi_decode(["string"], body)
        return ContractReverted(message)
    if selector == PANIC_SELECTOR or panic:
        code = abi_decode(["uint256"], body)[0] if len(body) == 32 else None
        return ContractReverted("Panic", {"code": hex(code)} if code is not None else {})
    known = error_selectors(*KNOWN_ARTIFACTS).get(selector)
    if known is not None:
        values = abi_decode(known.input_types, body)
        return ContractReverted(known.name, dict(zip(known.input_names, values, strict=True)))
    if raw:
        return ContractReverted("UnknownError", {"data": "0x" + raw.hex()})
    text = fallback.removeprefix("execution reverted: ").removeprefix("execution reverted")
    return ContractReverted(text.strip(" :") or "Reverted")
