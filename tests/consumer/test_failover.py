"""Failover: whose fault a failure is (``failover.verdict``), and what ``ChatService``
does about it before the first token (fail over, reopen, or report)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from proxy_router.chain.types import Model
from proxy_router.consumer import domain_errors as d
from proxy_router.consumer.chat import ChatService, Reply
from proxy_router.consumer.failover import Verdict, verdict
from proxy_router.consumer.schemas import ChatRequest
from proxy_router.consumer.sessions import ConsumerSession, LocalStatus
from proxy_router.metrics import Metrics
from proxy_router.morrpc import ErrorCode, RpcError, RpcTimeout, RpcUnavailable, SessionKey

PROVIDER_FAULT = {ErrorCode.BACKEND_UNAVAILABLE, ErrorCode.INTERNAL}
SESSION_OVER = {ErrorCode.SESSION_EXPIRED, ErrorCode.SESSION_CLOSED}


@pytest.mark.parametrize("code", list(ErrorCode))
def test_each_mor_rpc_code_has_a_verdict(code: ErrorCode):
    expected = (Verdict.FAIL_OVER if code in PROVIDER_FAULT else
                Verdict.REOPEN if code in SESSION_OVER else Verdict.SURFACE)
    assert verdict(RpcError(code, "x")) is expected


@pytest.mark.parametrize("exc", [RpcUnavailable("link lost"), RpcTimeout("silent"),
                                 TimeoutError()])
def test_an_unreachable_or_silent_provider_is_at_fault(exc: Exception):
    assert verdict(exc) is Verdict.FAIL_OVER


@pytest.mark.parametrize("exc", [RpcError("NEWER_PEER_CODE", "x"), d.SessionBusy("x"),
                                 ValueError("x")])
def test_anything_else_is_reported(exc: Exception):
    assert verdict(exc) is Verdict.SURFACE


# -- ChatService before the first token ---------------------------------------------------------

A, B = "0x" + "aa" * 20, "0x" + "bb" * 20
MODEL = Model(id="0x" + "11" * 32, name="m", created_at=1)
REQUEST = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user",
                                                                  "content": "hi"}]})


class Sessions:
    """Opens a session on the first provider not excluded; records what is discarded."""

    def __init__(self, *providers: str) -> None:
        self.providers = providers
        self.sessions: dict[str, ConsumerSession] = {}
        self.opened: list[str] = []
        self.discarded: list[str] = []
        self.over: list[str] = []
        self.pool = None

    async def session_for_model(self, model_id: str, duration: int,
                                exclude: set[str] = frozenset()  # type: ignore[assignment]
                                ) -> ConsumerSession:
        for s in self.sessions.values():
            if s.status is LocalStatus.OPEN and s.provider.lower() not in exclude:
                return s
        for provider in self.providers:
            if provider.lower() not in exclude:
                sid = f"0x{len(self.opened):064x}"
                self.sessions[sid] = ConsumerSession(sid, MODEL.id, "0xbid", provider,
                                                     "127.0.0.1:1", SessionKey.generate(),
                                                     10, 0, 10**10)
                self.opened.append(provider)
                return self.sessions[sid]
        raise d.NoBids(f"no active bid for model {model_id} (from an allowed provider)")

    def touch(self, session_id: str) -> None:
        pass

    async def discard(self, session: ConsumerSession) -> None:
        self.discarded.append(session.provider)

    def ended(self, session: ConsumerSession) -> None:
        session.status = LocalStatus.CLOSING
        self.over.append(session.provider)


def service(sessions: Sessions, failures: dict[str, list[Exception]], *,
            failover: bool = True) -> ChatService:
    """A ChatService whose providers fail with ``failures[provider]`` (in turn), then
    answer."""
    index = SimpleNamespace(find_model=lambda name: MODEL if name == "m" else None,
                            models={MODEL.id: MODEL})
    chat = ChatService(sessions, index, session_duration=600,  # type: ignore[arg-type]
                       failover=failover, first_token_timeout=5, metrics=Metrics("consumer"))

    async def send(session: ConsumerSession, payload: bytes, api: str = "chat") -> Reply:
        pending = failures.get(session.provider, [])
        if pending:
            raise pending.pop(0)
        return Reply(session, SimpleNamespace(result=None), b"data: {}\n\n")  # type: ignore[arg-type]

    chat._send = send  # type: ignore[method-assign]
    return chat


async def settled(chat: ChatService) -> None:
    await asyncio.gather(*chat._background)


@pytest.mark.parametrize("fault", [RpcError(ErrorCode.BACKEND_UNAVAILABLE, "llama down"),
                                   RpcError(ErrorCode.INTERNAL, "crashed"),
                                   RpcUnavailable("link lost"), TimeoutError()])
async def test_a_provider_at_fault_is_dropped_and_the_next_one_answers(fault: Exception):
    sessions = Sessions(A, B)
    chat = service(sessions, {A: [fault]})
    reply = await chat.start(REQUEST, None)
    await settled(chat)
    assert reply.session.provider == B
    assert sessions.opened == [A, B]
    assert sessions.discarded == [A], "the broken provider's session is settled as a dispute"


async def test_an_expired_session_is_replaced_with_the_same_provider_still_a_candidate():
    sessions = Sessions(A, B)
    chat = service(sessions, {A: [RpcError(ErrorCode.SESSION_EXPIRED, "over")]})
    reply = await chat.start(REQUEST, None)
    first = next(iter(sessions.sessions.values()))
    assert (reply.session.provider, sessions.opened) == (A, [A, A])
    assert first.status is not LocalStatus.OPEN
    assert sessions.over == [A] and sessions.discarded == [], \
        "the provider said it is over: settled with its receipt, not as a dispute"


async def test_an_error_that_is_not_the_provider_s_fault_reaches_the_client():
    sessions = Sessions(A, B)
    chat = service(sessions, {A: [RpcError(ErrorCode.NO_CAPACITY, "all slots busy")]})
    with pytest.raises(RpcError) as err:
        await chat.start(REQUEST, None)
    assert err.value.code == ErrorCode.NO_CAPACITY
    assert sessions.opened == [A] and next(iter(sessions.sessions.values())).status is (
        LocalStatus.OPEN)


async def test_when_every_provider_fails_the_client_learns_the_last_reason():
    sessions = Sessions(A, B)
    chat = service(sessions, {A: [RpcUnavailable("link lost")],
                              B: [RpcError(ErrorCode.BACKEND_UNAVAILABLE, "llama down")]})
    with pytest.raises(d.NoProviderAvailable) as err:
        await chat.start(REQUEST, None)
    assert f"{B}: BACKEND_UNAVAILABLE: llama down" in str(err.value)
    assert "no active bid" in str(err.value)


async def test_without_failover_the_provider_s_fault_is_reported_and_its_session_kept():
    sessions = Sessions(A, B)
    chat = service(sessions, {A: [RpcUnavailable("link lost")]}, failover=False)
    with pytest.raises(d.ProviderUnavailable, match="RpcUnavailable: link lost"):
        await chat.start(REQUEST, None)
    assert sessions.opened == [A] and sessions.discarded == []


@pytest.mark.parametrize(("fault", "raised"), [
    (RpcUnavailable("link lost"), d.ProviderUnavailable),
    (RpcError(ErrorCode.BACKEND_UNAVAILABLE, "llama down"), RpcError),
    (RpcError(ErrorCode.SESSION_EXPIRED, "over"), RpcError),
])
async def test_a_session_the_client_chose_is_never_swapped_for_another(
        fault: Exception, raised: type[Exception]):
    sessions = Sessions(A, B)
    chosen = await sessions.session_for_model(MODEL.id, 600)
    chat = service(sessions, {A: [fault]})
    with pytest.raises(raised):
        await chat.start(REQUEST, chosen.session_id)
    assert sessions.opened == [A] and sessions.discarded == []


@pytest.mark.parametrize(("session_id", "model", "raised"), [
    ("0x" + "99" * 32, "m", d.NoOpenSession),
    (None, "other", d.ModelNotFound),
])
async def test_an_unknown_session_or_model_is_refused_before_any_attempt(
        session_id: str | None, model: str, raised: type[Exception]):
    sessions = Sessions(A)
    chat = service(sessions, {})
    with pytest.raises(raised):
        await chat.start(REQUEST.model_copy(update={"model": model}), session_id)
    assert sessions.opened == []


async def test_a_session_with_no_free_turn_is_busy():
    sessions = Sessions(A)
    chat = service(sessions, {})
    chat.queue_wait_s = 0.05
    held = await chat.start(REQUEST, None)
    with pytest.raises(d.SessionBusy):
        await chat.start(REQUEST, held.session.session_id)
    held.close()
    (await chat.start(REQUEST, held.session.session_id)).close()


async def test_a_well_formed_answer_that_is_no_completion_is_a_bad_provider_response() -> None:
    sessions = Sessions(A, B)
    chat = service(sessions, {})

    async def send(session: ConsumerSession, payload: bytes, api: str = "chat") -> Reply:
        return Reply(session, _Empty(), b'{"id": "x"}')  # type: ignore[arg-type]

    chat._send = send  # type: ignore[method-assign]
    with pytest.raises(d.BadProviderResponse, match=f"provider {A} sent an invalid"):
        await chat.complete(REQUEST, None)
    assert sessions.opened == [A], "not failed over: the provider did answer"


class _Empty:
    """An RpcStream with no chunk after the first and no trailer."""

    result = None

    def __aiter__(self) -> _Empty:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration

    async def aclose(self) -> None:
        return None
