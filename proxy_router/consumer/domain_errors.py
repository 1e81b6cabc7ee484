"""What can go wrong when the consumer buys inference, as exceptions.

``SessionManager`` and ``ChatService`` raise these and know nothing of HTTP; the
API translates them once, at its edge, through the table in ``errors.py`` (a
test checks every class here has a row, so none can become a bare 500). Catch
``ConsumerError`` for all of them. The message is for a human and reaches the
client as the error's ``message``.
"""

from __future__ import annotations


class ConsumerError(Exception):
    """Root of the consumer's own failures."""


# -- what the client asked for does not exist or does not fit ------------------------------


class ModelNotFound(ConsumerError, LookupError):
    """No model of that name or id on the marketplace."""


class BidNotFound(ConsumerError, LookupError):
    """No bid of that id on chain."""


class SessionNotFound(ConsumerError, LookupError):
    """No session of that id on chain."""


class NoOpenSession(SessionNotFound):
    """The session the client named is not an open session of this wallet."""


class SessionModelMismatch(ConsumerError, ValueError):
    """The session the client named serves another model than the one asked for."""


class WrongModelKind(ConsumerError, ValueError):
    """The route asks what the model does not do: an embedding (tagged ``embedding`` on
    chain) asked to chat, a chat model asked for embeddings."""


class RequestTooLarge(ConsumerError, ValueError):
    """The prompt would not fit one sealed MOR-RPC frame."""


# -- the market refuses -------------------------------------------------------------------


class NotSessionUser(ConsumerError):
    """The session belongs to another wallet."""


class SessionClosed(ConsumerError):
    """The session is already settled on chain."""


class BidNotActive(ConsumerError):
    """The bid was deleted: nobody sells on it any more."""


class InsufficientMor(ConsumerError):
    """The wallet cannot pay the stake of the session asked for."""


class OpenSessionReverted(ConsumerError):
    """``openSession`` reverted although the provider's approval was checked."""


# -- no provider can serve right now -------------------------------------------------------


class NoBids(ConsumerError):
    """The model has no active bid (from an allowed provider)."""


class NoProviderAvailable(ConsumerError):
    """Every candidate provider was tried and failed; the message says why."""


class ProviderUnavailable(ConsumerError):
    """The provider of the session in use cannot be reached or stayed silent."""


class SessionBusy(ConsumerError):
    """The session is still answering as many prompts as its provider allows."""


class BadProviderResponse(ConsumerError):
    """The provider's answer is not a valid OpenAI chat completion."""
