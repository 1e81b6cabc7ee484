"""Assemble and run a router: store, chain client, market index, role services.

``Router.create(role, settings)`` builds everything and ``start``/``stop`` run
it, so the CLI, the devnet script and the tests start routers the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from proxy_router.chain.client import ChainClient
from proxy_router.chain.errors import ChainError, ChainUnavailable
from proxy_router.chain.index import MarketIndex
from proxy_router.chain.markets import Market, open_market
from proxy_router.config import (
    ConfigurationError,
    Settings,
    split_host_port,
    warn_ignored_reference_settings,
)
from proxy_router.dualport import RawHandler
from proxy_router.health import health_response
from proxy_router.metrics import Metrics
from proxy_router.netguard import ConnectionLimits, guard_of, serve_app
from proxy_router.periodic import run_periodically
from proxy_router.store.db import Store

log = structlog.get_logger(__name__)


async def connect_chain(settings: Settings, *, retry_s: float = 2.0,
                        attempts: int | None = None,
                        metrics: Metrics | None = None) -> ChainClient:
    """Connect, waiting for the chain when it is down (a router must not crash on it);
    waits for one of the ``ETH_NODE_MAX_CONNECTIONS`` show in ``metrics``."""
    n = 0
    traces = [metrics.pool_trace("chain")] if metrics is not None else []
    while True:
        try:
            return await ChainClient.connect(settings.eth_rpc_urls, settings.private_key,
                                             chain_id=settings.eth_node_chain_id,
                                             max_connections=settings.eth_node_max_connections,
                                             trace_configs=traces)
        except ChainUnavailable as exc:
            n += 1
            if attempts is not None and n >= attempts:
                raise
            log.warning("chain_unreachable_retrying", error=str(exc), retry_in_s=retry_s)
            await asyncio.sleep(retry_s)
        except ChainError as exc:
            raise ConfigurationError(str(exc)) from None


@dataclass
class Router:
    role: str
    settings: Settings
    store: Store
    client: ChainClient
    market: Market
    index: MarketIndex
    metrics: Metrics
    runners: list[web.AppRunner] = field(default_factory=list)
    closers: list[Any] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    bound_port: int = 0

    @classmethod
    async def create(cls, role: str, settings: Settings) -> Router:
        warn_ignored_reference_settings(settings)
        if role == "provider" and settings.models_config_path is None \
                and settings.models_config_content is None:
            raise ConfigurationError("MODELS_CONFIG_PATH (or MODELS_CONFIG_CONTENT) is required "
                                     "for the provider role")
        if role == "consumer" and (problem := settings.consumer_problem()):
            raise ConfigurationError(problem)
        addresses = settings.market_addresses()
        settings.private_key  # noqa: B018 -- unlock a keystore now: fail before any side effect
        store = await Store.open(settings.proxy_storage_path, role)
        metrics = Metrics("provider" if role == "provider" else "consumer")
        client = await connect_chain(settings, metrics=metrics)
        market = open_market(client, settings.marketplace_flavor, *addresses)
        index = MarketIndex(market, store,
                            poll_interval=settings.eth_node_polling_interval,
                            confirmations=settings.eth_node_confirmations,
                            start_block=settings.eth_node_start_block or 0,
                            max_log_range=settings.eth_node_max_log_range)
        metrics.follow_market(index, client.address)
        return cls(role, settings, store, client, market, index, metrics)

    async def start(self) -> None:
        await self.index.start()
        if self.role == "provider":
            await self._start_provider()
        else:
            await self._start_consumer()

    async def _serve(self, app: web.Application, address: str, *,
                     raw: RawHandler | None = None) -> int:
        """Serve ``app`` (and, with ``raw``, the reference's wire on the same port)."""
        host, port = split_host_port(address)
        runner, bound = await serve_app(app, host, port,
                                        ConnectionLimits.from_settings(self.settings), raw=raw)
        self.runners.append(runner)
        guard = guard_of(runner)
        if guard is not None:
            self.metrics.watch_connection_guard(guard.refused)
        return bound

    async def _start_provider(self) -> None:
        from proxy_router.morrpc import ReplayGuard, RpcServer, Signer
        from proxy_router.provider.backend import BackendTimeouts
        from proxy_router.provider.backend_pool import backend_session
        from proxy_router.provider.llama import EmbeddedLlamaServer
        from proxy_router.provider.lumerin_wire import LumerinWire
        from proxy_router.provider.models_config import (
            ModelsConfigError,
            load_configured_models,
            normalize_model_id,
        )
        from proxy_router.provider.service import ProviderService

        try:
            models = load_configured_models(self.settings.models_config_path,
                                            self.settings.models_config_content)
        except (ModelsConfigError, OSError) as exc:
            raise ConfigurationError(str(exc)) from None
        urls: dict[str, list[str]] = {}
        for model in models.models:
            if model.embedded:
                server = EmbeddedLlamaServer.from_config(model)
                log.info("starting_embedded_llama", model=model.model_name, gguf=str(model.gguf))
                urls[normalize_model_id(model.model_id)] = [await server.start()]
                self.closers.append(server.stop)
            else:
                urls[normalize_model_id(model.model_id)] = list(model.api_urls)
        # The backends' own pool, sized from the models' slots (aiohttp's default caps at
        # 100 connections whatever concurrentSlots says); waits for it are counted.
        backend_http = backend_session(models, trace_configs=[self.metrics.pool_trace("backend")])
        self.closers.append(backend_http.close)
        signer = Signer.from_key(self.settings.private_key)
        service = ProviderService(
            account=signer.account, market=self.market, index=self.index, models=models,
            backend_urls=urls, store=self.store, http=backend_http,
            backend_timeouts=BackendTimeouts(total=self.settings.backend_timeout_s),
            close_grace_s=self.settings.provider_close_grace_s, metrics=self.metrics,
            prompts_per_session=self.settings.prompts_per_session,
            approvals_per_user=self.settings.approvals_per_user,
            session_requests_per_ip_s=self.settings.session_requests_per_ip_s,
            prompt_queue_depth=self.settings.prompt_queue_depth,
            prompt_queue_wait_s=self.settings.prompt_queue_wait_s)
        service.rebuild_capacity()
        self.closers.append(service.close)
        # Nonces are remembered in memory only: refuse frames signed before this start.
        guard = ReplayGuard(self.settings.mor_rpc_replay_window_s, not_before=time.time())
        mor_rpc = RpcServer(signer, observer=self.metrics, replay_guard=guard,
                            credit_timeout=self.settings.stream_stall_timeout_s)
        service.register(mor_rpc)
        # Go proxy-routers and MorpheusUI speak the reference's raw TCP to the same port.
        wire = LumerinWire(service, signer, replay_guard=guard, metrics=self.metrics,
                           request_timeout_s=self.settings.http_body_timeout_s,
                           write_timeout_s=self.settings.stream_stall_timeout_s)
        self.metrics.watch(index=self.index, active_sessions=lambda: service.open_sessions,
                           rpc_connections=lambda: mor_rpc.open_connections)
        self.tasks.append(asyncio.create_task(
            run_periodically(service.sweep, self.settings.session_sweep_interval_s,
                             "provider-sweep"),
            name="sweeper"))
        app = web.Application(middlewares=[self.metrics.middleware])
        mor_rpc.add_routes(app)
        started = time.time()

        async def healthcheck(_: web.Request) -> web.Response:
            return health_response(self.index, started, await service.backend_health())

        app.router.add_get("/healthcheck", healthcheck)
        app.router.add_get("/metrics", self.metrics.handler)
        self.bound_port = await self._serve(app, self.settings.proxy_address, raw=wire.handle)
        log.info("provider_listening", address=self.settings.proxy_address,
                 provider=signer.address, models=[m.model_name for m in models.models])

    async def _start_consumer(self) -> None:
        from proxy_router.consumer.access import AccessPolicy
        from proxy_router.consumer.api import ConsumerApi
        from proxy_router.consumer.chat import ChatService
        from proxy_router.consumer.links import ProviderPool
        from proxy_router.consumer.sessions import SessionManager
        from proxy_router.morrpc import RpcPool, Signer

        signer = Signer.from_key(self.settings.private_key)
        pool = ProviderPool(
            RpcPool(signer, connect_timeout=self.settings.mor_rpc_connect_timeout_s,
                    first_frame_timeout=self.settings.first_token_timeout_s),
            self.client.chain_id, wire=self.settings.provider_wire)
        self.closers.append(pool.close)
        sessions = SessionManager(account=signer.account, market=self.market, index=self.index,
                                  store=self.store, pool=pool, allowlist=self.settings.allowlist,
                                  idle_timeout_s=self.settings.session_idle_timeout_s,
                                  direct_payment=self.settings.session_payment == "direct")
        await sessions.load()
        self.tasks.append(asyncio.create_task(
            run_periodically(sessions.sweep, self.settings.session_sweep_interval_s,
                             "consumer-sweep"), name="sweeper"))
        chat = ChatService(sessions, self.index,
                           session_duration=self.settings.session_duration_s,
                           failover=self.settings.failover_enabled,
                           first_token_timeout=self.settings.first_token_timeout_s,
                           metrics=self.metrics,
                           queue_depth=self.settings.prompt_queue_depth,
                           queue_wait_s=self.settings.prompt_queue_wait_s)
        self.metrics.watch(index=self.index, active_sessions=lambda: sessions.open_count,
                           rpc_connections=lambda: pool.connected)
        api = ConsumerApi(sessions, chat, access=AccessPolicy.from_settings(self.settings),
                          metrics=self.metrics, body_timeout_s=self.settings.http_body_timeout_s)
        self.bound_port = await self._serve(api.app(), self.settings.web_address)
        log.info("consumer_listening", address=self.settings.web_address, user=signer.address)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for runner in reversed(self.runners):
            await runner.cleanup()
        await self.index.stop()
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                await close()
        await self.client.close()
        await self.store.close()


async def run_router(role: str, settings: Settings) -> None:
    router = await Router.create(role, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await router.start()
        await stop.wait()
    finally:
        log.info("shutting_down", role=role)
        await router.stop()
