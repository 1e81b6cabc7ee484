"""Write the golden vectors in ``vectors/`` — independently of ``proxy_router``.

Run ``.venv/bin/python -m tests.morrpc_lumerin.make_vectors`` to regenerate (it
needs node and ``npm install``). Each vector's JSON text is spelled out by hand
below from the reference's Go structs (``proxy-router/internal/proxyapi/
morrpcmessage/request.go`` and ``mor_rpc.go`` of MorpheusAIs/Morpheus-Lumerin-Node):
field order, json tags, ``omitempty``, Go string escaping. Hashes come from
eth_utils' keccak, signatures from eth_keys (``crypto.Sign``: v 0/1; EIP-191 blobs:
v 27/28), ABI words are packed by hand and ECIES ciphertexts come from the npm
package ecies-geth with a fixed ephemeral key and IV. Nothing here imports our
implementation, so the vectors check it rather than echo it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eth_keys import keys
from eth_utils import keccak

from . import node_ecies

OUT = Path(__file__).with_name("vectors")

# Anvil's dev accounts #1 and #2: the provider and the user of request_test.go.
PROVIDER_KEY = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
USER_KEY = "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"
TS = 1719253477054  # ms, the timestamp of request_test.go
BID = "0xb0119306909b29feb8a2a30f343c32f7ceb0927325a4a6e4936d11d1236556c3"  # request_test.go
SESSION = "0x" + keccak(b"lumerin golden session").hex()
CHAIN_ID = 421614
SPEND = 270233162839357259772  # request_test.go
EPHEMERAL = "0c" * 32
IV = "00112233445566778899aabbccddeeff"

provider = keys.PrivateKey(bytes.fromhex(PROVIDER_KEY))
user = keys.PrivateKey(bytes.fromhex(USER_KEY))
PROVIDER_PUB = "0x04" + provider.public_key.to_bytes().hex()
USER_PUB = "0x04" + user.public_key.to_bytes().hex()
PROVIDER_ADDR = provider.public_key.to_checksum_address()
USER_ADDR = user.public_key.to_checksum_address()


def h(b: bytes) -> str:
    return "0x" + b.hex()


def sign_raw(key: keys.PrivateKey, signing_input: str) -> tuple[str, str]:
    """crypto.Sign(keccak256(json)): digest and r‖s‖v (v 0/1)."""
    digest = keccak(signing_input.encode())
    return h(digest), h(key.sign_msg_hash(digest).to_bytes())


def sign_eth(key: keys.PrivateKey, blob: bytes) -> str:
    """lib.SignEthMessageV2: EIP-191 over the 32-byte keccak of the blob, v 27/28."""
    digest = keccak(b"\x19Ethereum Signed Message:\n32" + keccak(blob))
    sig = key.sign_msg_hash(digest).to_bytes()
    return h(sig[:64] + bytes((sig[64] + 27,)))


def word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def ecies(pub: str, plaintext: bytes) -> str:
    [ct] = node_ecies.run([{"op": "encrypt", "pub": pub[2:], "msg": plaintext.hex(),
                            "ephem": EPHEMERAL, "iv": IV}])
    assert isinstance(ct, str), ct
    return ct


def request(rid: str, method: str, params: str) -> str:
    return f'{{"id":"{rid}","method":"{method}","params":{params}}}'


def response(rid: str, result: str) -> str:
    return f'{{"id":"{rid}","result":{result}}}'


def vector(name: str, description: str, **fields: Any) -> None:
    body = {"name": name, "description": description, **fields}
    (OUT / f"{name}.json").write_text(json.dumps(body, indent=2, ensure_ascii=True) + "\n")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    common = {"provider_key": "0x" + PROVIDER_KEY, "user_key": "0x" + USER_KEY}

    # network.ping: PingReq{nonce, signature} — signature NOT omitempty: signed as "0x".
    nonce = "0x0102030405060708"
    unsigned = f'{{"nonce":"{nonce}","signature":"0x"}}'
    digest, sig = sign_raw(user, unsigned)
    params = f'{{"nonce":"{nonce}","signature":"{sig}"}}'
    vector("ping_request", "PingReq signed by the user; the reference's ping id is \"0\"",
           **common, method="network.ping", struct="PingReq", signer="user", nonce=nonce,
           signing_input=unsigned, digest=digest, signature=sig, params=params,
           wire=request("0", "network.ping", params))

    # PongRes{nonce, version omitempty, signature (not omitempty)}.
    for name, version in (("pong_response", "v5.2.0-golden"), ("pong_response_no_version", "")):
        ver = f',"version":"{version}"' if version else ""
        unsigned = f'{{"nonce":"{nonce}"{ver},"signature":"0x"}}'
        digest, sig = sign_raw(provider, unsigned)
        result = f'{{"nonce":"{nonce}"{ver},"signature":"{sig}"}}'
        vector(name, "PongRes signed by the provider (checked against its address)", **common,
               method="network.ping", struct="PongRes", signer="provider", nonce=nonce,
               version=version, signing_input=unsigned, digest=digest, signature=sig,
               params=result, wire=response("0", result))

    # session.request: SessionReq{signature omitempty, user, key, spend (string), timestamp, bidid}.
    rid = "a1b2c3d4"
    user_lower = USER_ADDR.lower()
    fields = (f'"user":"{user_lower}","key":"{USER_PUB}","spend":"{SPEND}",'
              f'"timestamp":{TS},"bidid":"{BID}"')
    unsigned = "{" + fields + "}"
    digest, sig = sign_raw(user, unsigned)
    params = f'{{"signature":"{sig}",' + fields + "}"
    vector("session_request", "SessionReq: addresses lower-case, spend a decimal string, "
           "timestamp in ms, signature first (omitempty: absent when signing)", **common,
           method="session.request", struct="SessionReq", signer="user", request_id=rid,
           user=USER_ADDR, bid_id=BID, spend=str(SPEND), timestamp=TS,
           signing_input=unsigned, digest=digest, signature=sig, params=params,
           wire=request(rid, "session.request", params))

    # SessionRes{message (provider pubkey), approval, approvalSig, user, timestamp, signature}.
    approval = bytes.fromhex(BID[2:]) + word(CHAIN_ID) + bytes(12) + bytes.fromhex(
        USER_ADDR[2:]) + word(TS)
    approval_sig = sign_eth(provider, approval)
    fields = (f'"message":"{PROVIDER_PUB}","approval":"{h(approval)}",'
              f'"approvalSig":"{approval_sig}","user":"{user_lower}","timestamp":{TS}')
    unsigned = "{" + fields + "}"
    digest, sig = sign_raw(provider, unsigned)
    result = "{" + fields + f',"signature":"{sig}"}}'
    vector("session_response", "SessionRes: the provider's 65-byte key in message; approval = "
           "abi.encode(bytes32 bid, uint256 chainId, address user, uint128 ts), approvalSig "
           "EIP-191 (v 27/28)", **common, method="session.request", struct="SessionRes",
           signer="provider", request_id=rid, chain_id=CHAIN_ID, bid_id=BID, user=USER_ADDR,
           timestamp=TS, approval=h(approval), approval_sig=approval_sig,
           signing_input=unsigned, digest=digest, signature=sig, params=result,
           wire=response(rid, result))

    # session.prompt: SessionPromptReq{signature omitempty, sessionid, message, timestamp}.
    # The OpenAI body is a string: Go escapes its quotes and backslashes, <, > and & as
    # \u003c \u003e \u0026, U+2028 as \u2028, and leaves é, 😀 and DEL (0x7f) as UTF-8.
    rid = "0badcafe"
    body = ('{"model":"llama","messages":[{"role":"user","content":'
            '"<b>Tom & Jerry</b>\\n\u2028 é 😀 \x7f"}],"stream":true}')
    escaped = (r'"{\"model\":\"llama\",\"messages\":[{\"role\":\"user\",\"content\":'
               r'\"\u003cb\u003eTom \u0026 Jerry\u003c/b\u003e\\n\u2028 ' + "é 😀 \x7f"
               + r'\"}],\"stream\":true}"')
    fields = f'"sessionid":"{SESSION}","message":{escaped},"timestamp":{TS}'
    unsigned = "{" + fields + "}"
    digest, sig = sign_raw(user, unsigned)
    params = f'{{"signature":"{sig}",' + fields + "}"
    vector("prompt_request", "SessionPromptReq: the OpenAI body in the clear, Go-escaped",
           **common, method="session.prompt", struct="SessionPromptReq", signer="user",
           request_id=rid, session_id=SESSION, body=body, timestamp=TS,
           signing_input=unsigned, digest=digest, signature=sig, params=params,
           wire=request(rid, "session.prompt", params))

    # SessionPromptRes{message (ECIES hex, no 0x), signature omitempty, timestamp}.
    chunk = (b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1719253477,'
             b'"model":"llama","choices":[{"index":0,"delta":{"content":"Hi"}}]}')
    for name, plaintext, what in (("prompt_chunk", chunk, "a chat.completion.chunk"),
                                  ("prompt_done", b'"[DONE]"', 'the end marker "[DONE]"')):
        ct = ecies(USER_PUB, plaintext)
        unsigned = f'{{"message":"{ct}","timestamp":{TS}}}'
        digest, sig = sign_raw(provider, unsigned)
        result = f'{{"message":"{ct}","signature":"{sig}","timestamp":{TS}}}'
        vector(name, f"SessionPromptRes carrying {what}, ECIES-encrypted to the user's key "
               "(bare hex, no 0x)", **common, method="session.prompt",
               struct="SessionPromptRes", signer="provider", request_id=rid, timestamp=TS,
               plaintext=plaintext.decode(), ecies_ephemeral_key="0x" + EPHEMERAL,
               ecies_iv="0x" + IV, ciphertext=ct, signing_input=unsigned, digest=digest,
               signature=sig, params=result, wire=response(rid, result))

    # session.report: SessionReportReq{signature omitempty, message (session id), timestamp}.
    rid = "5e551011"
    fields = f'"message":"{SESSION}","timestamp":{TS}'
    unsigned = "{" + fields + "}"
    digest, sig = sign_raw(user, unsigned)
    params = f'{{"signature":"{sig}",' + fields + "}"
    vector("report_request", "SessionReportReq: message is the session id", **common,
           method="session.report", struct="SessionReportReq", signer="user", request_id=rid,
           session_id=SESSION, timestamp=TS, signing_input=unsigned, digest=digest,
           signature=sig, params=params, wire=request(rid, "session.report", params))

    # SessionReportRes{message (report), signedReport, signature omitempty, timestamp}.
    tps, ttft, inp, out = 12_345, 321, 42, 512
    report = (bytes.fromhex(SESSION[2:]) + word(CHAIN_ID) + word(TS) + word(tps) + word(ttft)
              + word(inp) + word(out))
    signed_report = sign_eth(provider, report)
    unsigned = f'{{"message":"{h(report)}","signedReport":"{signed_report}","timestamp":{TS}}}'
    digest, sig = sign_raw(provider, unsigned)
    result = (f'{{"message":"{h(report)}","signedReport":"{signed_report}",'
              f'"signature":"{sig}","timestamp":{TS}}}')
    vector("report_response", "SessionReportRes: report = abi.encode(bytes32 sessionId, uint256 "
           "chainId, uint128 ts, uint32 tps*1000, uint32 ttftMs, uint32 in, uint32 out), "
           "signedReport EIP-191", **common, method="session.report",
           struct="SessionReportRes", signer="provider", request_id=rid, session_id=SESSION,
           chain_id=CHAIN_ID, timestamp=TS, tps_scaled1000=tps, ttft_ms=ttft, input_tokens=inp,
           output_tokens=out, report=h(report), signed_report=signed_report,
           signing_input=unsigned, digest=digest, signature=sig, params=result,
           wire=response(rid, result))

    # Infrastructure error (tcphandlers/tcp.go): unsigned, signature "0x00", result null.
    rid = "deadbeef"
    text = "unknown method: unknown method: session.nope"
    err = f'{{"message":"{text}","code":400,"data":{{"timestamp":{TS},"signature":"0x00"}}}}'
    vector("error_unknown_method", "The reference's answer to an unknown method: an unsigned "
           "RpcError (data.signature 0x00) after result null", **common, request_id=rid,
           method="session.nope", message=text, timestamp=TS, error=err,
           wire=f'{{"id":"{rid}","result":null,"error":{err}}}')

    # Model error (ResponseError): message = ECIES hex of {"providerModelError": …}, signed
    # over the struct with data.signature emptied ("0x": that field has no omitempty).
    rid = "0badcafe"
    plain = b'{"providerModelError":{"error":{"message":"model overloaded","type":"server"}}}'
    ct = ecies(USER_PUB, plain)
    unsigned = f'{{"message":"{ct}","code":400,"data":{{"timestamp":{TS},"signature":"0x"}}}}'
    digest, sig = sign_raw(provider, unsigned)
    err = f'{{"message":"{ct}","code":400,"data":{{"timestamp":{TS},"signature":"{sig}"}}}}'
    vector("error_model", "A backend error during session.prompt: encrypted and signed",
           **common, request_id=rid, plaintext=plain.decode(),
           ecies_ephemeral_key="0x" + EPHEMERAL, ecies_iv="0x" + IV, ciphertext=ct,
           timestamp=TS, signing_input=unsigned, digest=digest, signature=sig, error=err,
           wire=f'{{"id":"{rid}","result":null,"error":{err}}}')

    # ECIES against crypto_test.go's key (Anvil #0): "zuck" to a fixed ephemeral key and IV.
    zuck_key = keys.PrivateKey(bytes.fromhex(
        "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"))
    zuck_pub = "0x04" + zuck_key.public_key.to_bytes().hex()
    vector("ecies_zuck", "lib/crypto_test.go's TestEncryptDecrypt key and message, made "
           "deterministic (ephemeral key, IV) and encrypted by ecies-geth",
           private_key="0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
           public_key=zuck_pub, plaintext="zuck", ecies_ephemeral_key="0x" + EPHEMERAL,
           ecies_iv="0x" + IV, ciphertext=ecies(zuck_pub, b"zuck"))


if __name__ == "__main__":
    main()
