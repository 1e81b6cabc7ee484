"""Per-operation cost of MOR-RPC's cryptography, with eth_account as the baseline.

    .venv/bin/python bench/rpc_crypto.py [--iterations N]

Prints microseconds per operation: frame signing and signer recovery (ours via
coincurve vs eth_account), sealing+opening a 100-byte chunk (AES-256-GCM),
canonical JSON of a typical request, and the one-off session key derivation.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from eth_account import Account
from eth_account.messages import encode_defunct

from proxy_router.morrpc import Role, SessionKey, Signer, canonical_json, derive_cipher
from proxy_router.morrpc.protocol import chunk_aad_prefix, request_frame
from proxy_router.morrpc.signing import frame_digest, keccak256, recover_frame_signer


def per_op_us(fn: Callable[[], object], iterations: int) -> float:
    fn()  # warm caches
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - start) / iterations * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    n = parser.parse_args().iterations

    consumer = Signer.from_key("0x" + "22" * 32)
    provider = Signer.from_key("0x" + "11" * 32)
    frame = request_frame(42, "session.prompt", {
        "sessionId": "0x" + "ab" * 32,
        "payload": "A" * 400,  # ~300-byte encrypted prompt, base64
    }, consumer.address)
    signed = consumer.sign_frame(frame)
    defunct = encode_defunct(primitive=keccak256(canonical_json(
        {k: v for k, v in signed.items() if k != "signature"})))
    eth_sig = consumer.account.sign_message(defunct).signature

    session = SessionKey.generate()
    c2p = derive_cipher(session, provider.public_key, Role.CONSUMER)
    p2c = derive_cipher(provider, session.public_key, Role.PROVIDER)
    chunk = b'{"choices":[{"delta":{"content":" token"},"index":0}],"object":"chat.chunk"}'
    chunk = chunk.ljust(100, b" ")
    aad = chunk_aad_prefix(42, signed["nonce"]) + (7).to_bytes(8, "big")

    rows = [
        ("sign_frame (coincurve)", lambda: consumer.sign_frame(frame), n),
        ("sign (eth_account baseline)", lambda: consumer.account.sign_message(defunct), n // 4),
        ("recover_frame_signer (coincurve)", lambda: recover_frame_signer(signed), n),
        ("recover (eth_account baseline)",
         lambda: Account.recover_message(defunct, signature=eth_sig), n // 4),
        ("seal+open 100-byte chunk (AES-256-GCM)", lambda: c2p.open(p2c.seal(chunk, aad), aad),
         n * 10),
        ("canonical_json(request frame)", lambda: canonical_json(signed), n * 5),
        ("frame_digest (canonical + 2x keccak)", lambda: frame_digest(signed), n * 5),
        ("derive_cipher (ECDH + 2x HKDF, once per session)",
         lambda: derive_cipher(session, provider.public_key, Role.CONSUMER), n // 2),
    ]
    width = max(len(name) for name, _, _ in rows)
    print(f"{'operation':<{width}}  µs/op  (iterations)")
    for name, fn, iterations in rows:
        iterations = max(iterations, 1)
        print(f"{name:<{width}}  {per_op_us(fn, iterations):6.2f}  ({iterations})")


if __name__ == "__main__":
    main()
