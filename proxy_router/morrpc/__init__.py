"""MOR-RPC: signed, end-to-end encrypted, multiplexed consumer ⇄ provider protocol.

Modules: ``canonical`` (bytes a signature covers), ``signing`` (EIP-191 frame
signatures), ``replay`` (stale/replayed frame guard), ``crypto`` (ECDH → HKDF →
AES-GCM), ``errors`` (stable codes), ``protocol`` (frame shapes), ``server`` and
``client`` (the WebSocket transport).
"""

from .canonical import CanonicalJsonError, canonical_json
from .client import ChunkSink, RpcClient, RpcPool, RpcStream, relay_chunks
from .crypto import CipherCache, E2ECipher, Role, SessionKey, derive_cipher
from .errors import ErrorCode, RpcError, RpcTimeout, RpcUnavailable
from .protocol import PROTOCOL, STREAM_WINDOW, WS_PATH
from .replay import ReplayGuard
from .server import RequestContext, RpcServer
from .signing import Signer, recover_frame_public_key, recover_frame_signer

__all__ = [
    "PROTOCOL",
    "STREAM_WINDOW",
    "WS_PATH",
    "CanonicalJsonError",
    "ChunkSink",
    "CipherCache",
    "E2ECipher",
    "ErrorCode",
    "ReplayGuard",
    "RequestContext",
    "Role",
    "RpcClient",
    "RpcError",
    "RpcPool",
    "RpcServer",
    "RpcStream",
    "RpcTimeout",
    "RpcUnavailable",
    "SessionKey",
    "Signer",
    "canonical_json",
    "derive_cipher",
    "recover_frame_public_key",
    "recover_frame_signer",
    "relay_chunks",
]
