"""Golden vectors: our builders write the reference's exact bytes, our parsers take them.

The vectors (``vectors/*.json``) are spelled out from the Go structs by
``make_vectors.py`` without using our code. For each: the builder's wire bytes, the
signing input, digest and signature must match exactly; parsing the wire and
re-marshalling (what the Go verifier does) must give the same bytes back, and the
signature must verify against the right key and no other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy_router.morrpc.errors import ErrorCode, RpcError
from proxy_router.morrpc.lumerin import (
    SESSION_PROMPT,
    Approval,
    PingReq,
    PongRes,
    Report,
    Request,
    Response,
    RpcErrorBody,
    RpcErrorData,
    SessionPromptRes,
    SessionReportRes,
    SessionRes,
    check_pong,
    check_report_response,
    check_session_request,
    check_session_response,
    decrypt_model_error,
    ecies_decrypt_hex,
    ecies_encrypt,
    error_response,
    parse_request,
    parse_response,
    ping_request,
    pong_response,
    prompt_request,
    report_request,
    report_response,
    session_request,
    session_response,
)
from proxy_router.morrpc.signing import Signer

VECTORS = Path(__file__).with_name("vectors")


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text())
    return data


def b(text: str) -> bytes:
    return text.encode("utf-8")


def x(text: str) -> bytes:
    return bytes.fromhex(text.removeprefix("0x"))


V = {p.stem: load(p.stem) for p in sorted(VECTORS.glob("*.json"))}
PROVIDER = Signer.from_key(V["ping_request"]["provider_key"])
USER = Signer.from_key(V["ping_request"]["user_key"])
STRANGER = Signer.from_key("0x" + "77" * 32)


def test_every_message_has_a_vector() -> None:
    assert set(V) == {
        "ping_request", "pong_response", "pong_response_no_version", "session_request",
        "session_response", "prompt_request", "prompt_chunk", "prompt_done", "report_request",
        "report_response", "error_unknown_method", "error_model", "ecies_zuck"}


def check_signed(vec: dict[str, Any], params: Any, signer: Signer) -> None:
    assert params.signing_input() == b(vec["signing_input"])
    assert "0x" + params.digest().hex() == vec["digest"]
    assert params.get_signature() == x(vec["signature"])
    assert params.go_json() == b(vec["params"])
    params.verify(signer.public_key)
    params.verify_address(signer.address)
    with pytest.raises(RpcError) as err:
        params.verify(STRANGER.public_key)
    assert err.value.code == ErrorCode.BAD_SIGNATURE


def reparse_request(vec: dict[str, Any]) -> Request[Any]:
    """What the Go provider does: decode the wire, re-marshal the params."""
    req = parse_request(orjson.loads(vec["wire"]))
    assert req.params.go_json() == b(vec["params"])
    assert req.encode() == b(vec["wire"])
    return req


def reparse_response(vec: dict[str, Any], result_type: type[Any]) -> Response[Any]:
    resp = parse_response(orjson.loads(vec["wire"]), result_type)
    assert resp.encode() == b(vec["wire"])
    return resp


def test_ping_request() -> None:
    vec = V["ping_request"]
    req = ping_request(USER, x(vec["nonce"]))
    assert req.encode() == b(vec["wire"])
    check_signed(vec, req.params, USER)
    assert isinstance(reparse_request(vec).params, PingReq)


@pytest.mark.parametrize("name", ["pong_response", "pong_response_no_version"])
def test_pong_response(name: str) -> None:
    vec = V[name]
    ping = parse_request(orjson.loads(V["ping_request"]["wire"]))
    resp = pong_response(ping, PROVIDER, vec["version"])
    assert resp.encode() == b(vec["wire"])
    assert resp.result is not None
    check_signed(vec, resp.result, PROVIDER)
    parsed = reparse_response(vec, PongRes)
    assert check_pong(parsed, provider=PROVIDER.address, nonce=x(vec["nonce"])).version == \
        vec["version"]


def test_session_request() -> None:
    vec = V["session_request"]
    req = session_request(USER, bid_id=vec["bid_id"], spend=int(vec["spend"]),
                          request_id=vec["request_id"], timestamp=vec["timestamp"])
    assert req.encode() == b(vec["wire"])
    check_signed(vec, req.params, USER)
    parsed = reparse_request(vec)
    assert parsed.params.user == USER.address  # checksummed in Python, lower-case on the wire
    assert check_session_request(parsed.params) == USER.public_key


def test_session_response() -> None:
    vec = V["session_response"]
    req = parse_request(orjson.loads(V["session_request"]["wire"]))
    resp = session_response(req, PROVIDER, chain_id=vec["chain_id"], timestamp=vec["timestamp"])
    assert resp.encode() == b(vec["wire"])
    assert resp.result is not None
    check_signed(vec, resp.result, PROVIDER)
    assert resp.result.approval == x(vec["approval"])
    assert resp.result.approval_sig == x(vec["approval_sig"])
    opened = check_session_response(reparse_response(vec, SessionRes), provider=PROVIDER.address,
                                    user=USER.address, bid_id=vec["bid_id"],
                                    chain_id=vec["chain_id"])
    assert opened.provider_public_key == PROVIDER.public_key
    assert opened.decoded == Approval(vec["bid_id"], vec["chain_id"], USER.address,
                                      vec["timestamp"])


def test_prompt_request() -> None:
    vec = V["prompt_request"]
    req = prompt_request(USER, session_id=vec["session_id"], body=vec["body"],
                         request_id=vec["request_id"], timestamp=vec["timestamp"])
    assert req.encode() == b(vec["wire"])
    check_signed(vec, req.params, USER)
    assert reparse_request(vec).params.message == vec["body"]


@pytest.mark.parametrize("name", ["prompt_chunk", "prompt_done"])
def test_prompt_response_chunk(name: str) -> None:
    vec = V[name]
    ct = ecies_encrypt(USER.public_key, b(vec["plaintext"]),
                       ephemeral_secret=x(vec["ecies_ephemeral_key"]), iv=x(vec["ecies_iv"]))
    assert ct.hex() == vec["ciphertext"]
    res = SessionPromptRes(message=ct.hex(), timestamp=vec["timestamp"]).signed(PROVIDER)
    assert Response(vec["request_id"], res).encode() == b(vec["wire"])
    check_signed(vec, res, PROVIDER)
    parsed = reparse_response(vec, SessionPromptRes).unwrap()
    assert ecies_decrypt_hex(USER, parsed.message) == b(vec["plaintext"])


def test_report_request() -> None:
    vec = V["report_request"]
    req = report_request(USER, session_id=vec["session_id"], request_id=vec["request_id"],
                         timestamp=vec["timestamp"])
    assert req.encode() == b(vec["wire"])
    check_signed(vec, req.params, USER)
    reparse_request(vec)


def test_report_response() -> None:
    vec = V["report_response"]
    resp = report_response(vec["request_id"], PROVIDER, session_id=vec["session_id"],
                           chain_id=vec["chain_id"], tps_scaled1000=vec["tps_scaled1000"],
                           ttft_ms=vec["ttft_ms"], input_tokens=vec["input_tokens"],
                           output_tokens=vec["output_tokens"], timestamp=vec["timestamp"])
    assert resp.encode() == b(vec["wire"])
    assert resp.result is not None
    check_signed(vec, resp.result, PROVIDER)
    report = check_report_response(reparse_response(vec, SessionReportRes),
                                   provider_public_key=PROVIDER.public_key,
                                   session_id=vec["session_id"], chain_id=vec["chain_id"])
    assert report == Report(vec["session_id"], vec["chain_id"], vec["timestamp"],
                            vec["tps_scaled1000"], vec["ttft_ms"], vec["input_tokens"],
                            vec["output_tokens"])


def test_unknown_method_error() -> None:
    vec = V["error_unknown_method"]
    obj = orjson.loads(request(vec["request_id"], vec["method"]))
    with pytest.raises(RpcError) as err:
        parse_request(obj)
    assert err.value.code == ErrorCode.UNKNOWN_METHOD
    resp = error_response(vec["request_id"], err.value, timestamp=vec["timestamp"])
    assert resp.encode() == b(vec["wire"])
    parsed = reparse_response(vec, SessionPromptRes)
    assert parsed.error is not None and not parsed.error.is_signed
    with pytest.raises(RpcError) as back:
        parsed.unwrap()
    assert back.value.code == ErrorCode.UNKNOWN_METHOD


def request(rid: str, method: str) -> str:
    return f'{{"id":"{rid}","method":"{method}","params":{{}}}}'


def test_model_error() -> None:
    vec = V["error_model"]
    ct = ecies_encrypt(USER.public_key, b(vec["plaintext"]),
                       ephemeral_secret=x(vec["ecies_ephemeral_key"]), iv=x(vec["ecies_iv"]))
    assert ct.hex() == vec["ciphertext"]
    body = RpcErrorBody(ct.hex(), 400, RpcErrorData(vec["timestamp"], b"")).signed(PROVIDER)
    assert body.signing_input() == b(vec["signing_input"])
    assert body.get_signature() == x(vec["signature"])
    assert Response(vec["request_id"], None, body).encode() == b(vec["wire"])
    parsed = reparse_response(vec, SessionPromptRes)
    assert parsed.error is not None and parsed.error.is_signed
    err = decrypt_model_error(parsed.error, user_key=USER, provider_public_key=PROVIDER.public_key)
    assert err.code == ErrorCode.BACKEND_ERROR
    assert err.data is not None
    assert err.data["providerModelError"] == {"error": {"message": "model overloaded",
                                                        "type": "server"}}


def test_ecies_vector_from_the_reference_test_key() -> None:
    vec = V["ecies_zuck"]
    key = Signer.from_key(vec["private_key"])
    assert "0x" + key.public_key.hex() == vec["public_key"]
    ct = ecies_encrypt(x(vec["public_key"]), b"zuck",
                       ephemeral_secret=x(vec["ecies_ephemeral_key"]), iv=x(vec["ecies_iv"]))
    assert ct.hex() == vec["ciphertext"]
    assert ecies_decrypt_hex(key, vec["ciphertext"]) == b"zuck"
    assert ecies_decrypt_hex(x(vec["private_key"]), vec["ciphertext"]) == b"zuck"


# -- facts taken from the reference's own Go tests ------------------------------------------
def test_mor_rpc_test_key_pair() -> None:
    """morrpcmessage/mor_rpc_test.go: private key 81f44a… verifies with public key 033e5e…
    (compressed), for params marshalled from a map (keys sorted, as Go sorts them)."""
    from proxy_router.morrpc.lumerin import go_marshal, recover_message_key, sign_message_digest
    from proxy_router.morrpc.signing import keccak256

    signer = Signer.from_key("81f44a49c40f206517efbbcca783d808914841200e0ac9a769368e1b2741e227")
    compressed = x("033e5e77f12aa67e52484ce64b64737d397098e78d54beba15a0bf6dcfdd5ae7e2")
    params = {"param3": "value3", "param1": "value1", "param2": "value2"}
    text = go_marshal(params)
    assert text == '{"param1":"value1","param2":"value2","param3":"value3"}'
    sig = sign_message_digest(signer, keccak256(text.encode()))
    assert sig[64] in (0, 1)
    key = recover_message_key(keccak256(text.encode()), sig)
    from coincurve import PublicKey

    assert PublicKey(key).format(compressed=True) == compressed
    # ..._incorrect_params: another value under the same signature recovers another key
    other = go_marshal({**params, "param3": "unknown value"}).encode()
    assert PublicKey(recover_message_key(keccak256(other), sig)).format() != compressed


REQUEST_TEST_JSON = (
    '{"bidid":"0xb0119306909b29feb8a2a30f343c32f7ceb0927325a4a6e4936d11d1236556c3",'
    '"key":"0x049d9031e97dd78ff8c15aa86939de9b1e791066a0224e331bc962a2099a7b1f0464b8bbafe1535'
    'f2301c72c2cb3535b172da30b02686ab0393d348614f157fbdb","provider":"0x70997970c51812dc3a010c7d'
    '01b50e0d17dc79c8","signature":"0xa2bcdbd6ab6bf137c9372488139b9c4ed42503bb145f6ee9f72efd3e'
    'ae6133934f0f24d8f09a8f05d057e80f8ef320d74abef9fdc915e47cdc06c55f51d78a4e01","spend":"27023'
    '3162839357259772","timestamp":1719253477054,"user":"0x3c44cdddb6a900fa2b585dd299e03d12fa42'
    '93bc"}')
"""morrpcmessage/request_test.go's SessionReq: keys sorted and an extra ``provider``."""


def test_request_test_session_req_parses_as_go_does() -> None:
    from proxy_router.morrpc.lumerin import SessionReq

    req = SessionReq.from_obj(orjson.loads(REQUEST_TEST_JSON))  # "provider" ignored, as in Go
    assert req.user == "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
    assert req.spend == 270233162839357259772 and req.timestamp == 1719253477054
    assert req.go_json() == (
        b'{"signature":"0xa2bcdbd6ab6bf137c9372488139b9c4ed42503bb145f6ee9f72efd3eae6133934f0f24d8f'
        b'09a8f05d057e80f8ef320d74abef9fdc915e47cdc06c55f51d78a4e01","user":"0x3c44cdddb6a900fa2b5'
        b'85dd299e03d12fa4293bc","key":"0x049d9031e97dd78ff8c15aa86939de9b1e791066a0224e331bc962a2'
        b'099a7b1f0464b8bbafe1535f2301c72c2cb3535b172da30b02686ab0393d348614f157fbdb","spend":"270'
        b'233162839357259772","timestamp":1719253477054,"bidid":"0xb0119306909b29feb8a2a30f343c32f'
        b'7ceb0927325a4a6e4936d11d1236556c3"}')


def test_request_test_signature_predates_the_struct_order() -> None:
    """That fixture was signed over the sorted-key JSON *with* ``provider`` (an older
    client); under today's struct order the reference's own verifier would reject it —
    and so do we. It does recover to its user under the old form."""
    from proxy_router.morrpc.lumerin import SessionReq, recover_message_key
    from proxy_router.morrpc.signing import keccak256, public_key_to_address

    req = SessionReq.from_obj(orjson.loads(REQUEST_TEST_JSON))
    with pytest.raises(RpcError):
        check_session_request(req)
    old = orjson.loads(REQUEST_TEST_JSON)
    del old["signature"]
    old_input = json.dumps(old, separators=(",", ":"), sort_keys=True).encode()
    key = recover_message_key(keccak256(old_input), req.signature)
    assert key == req.key
    assert public_key_to_address(key) == req.user


def test_a_result_for_another_method_is_refused() -> None:
    """A session.prompt chunk cannot pass as a session.request result."""
    with pytest.raises(RpcError) as err:
        parse_response(orjson.loads(V["prompt_chunk"]["wire"]), SessionRes)
    assert err.value.code == ErrorCode.BAD_REQUEST
    assert SESSION_PROMPT == V["prompt_chunk"]["method"]
