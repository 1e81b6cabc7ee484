"""Chat request validation: clear 400s naming the field, unknown params kept."""

from __future__ import annotations

import pytest

from proxy_router.consumer.errors import ApiError
from proxy_router.consumer.schemas import ChatRequest, OpenSessionRequest, parse_body


def test_a_valid_body_keeps_unknown_openai_parameters_for_the_provider():
    req = parse_body(ChatRequest, b'{"model":"m","messages":[{"role":"user","content":"hi"}],'
                                  b'"top_k":5,"stream":true}')
    body = req.upstream_body()
    assert body["top_k"] == 5 and body["stream"] is True and "model" not in body


@pytest.mark.parametrize(("raw", "code", "param"), [
    (b"{not json", "invalid_json", None),
    (b"", "invalid_json", None),
    (b'{"messages":[{"role":"user","content":"x"}]}', "invalid_parameter", "model"),
    (b'{"model":"m","messages":"hi"}', "invalid_parameter", "messages"),
    (b'{"model":"m","messages":[]}', "invalid_parameter", "messages"),
    (b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":"x"}',
     "invalid_parameter", "max_tokens"),
    (b'{"model":"m","messages":[{"role":"robot","content":"x"}]}', "invalid_parameter",
     "messages.0.role"),
])
def test_bad_bodies_are_400_with_a_stable_code_naming_the_field(raw, code, param):
    with pytest.raises(ApiError) as err:
        parse_body(ChatRequest, raw)
    assert err.value.status == 400
    assert err.value.code == code
    assert err.value.param == param
    assert err.value.body()["error"]["code"] == code


def test_open_session_defaults_and_bounds():
    assert parse_body(OpenSessionRequest, b"").sessionDuration == 600
    with pytest.raises(ApiError):
        parse_body(OpenSessionRequest, b'{"sessionDuration": 10}')
