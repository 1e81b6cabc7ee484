"""EmbeddedLlamaServer without a real model: its command line and how a failed start reads."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from proxy_router.provider.llama import EmbeddedLlamaServer, LlamaServerError
from proxy_router.provider.models_config import parse_models_config


def test_command_runs_llama_cpp_server_with_our_settings(tmp_path: Path) -> None:
    srv = EmbeddedLlamaServer(
        tmp_path / "m.gguf", port=8123, n_ctx=1024, n_threads=2, model_alias="smol",
        extra_args={"n_batch": 64, "flash_attn": True},
    )  # fmt: skip
    cmd = srv.command()
    assert cmd[:3] == [sys.executable, "-m", "llama_cpp.server"]
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert flags == {
        "--model": str(tmp_path / "m.gguf"), "--model_alias": "smol", "--host": "127.0.0.1",
        "--port": "8123", "--n_ctx": "1024", "--interrupt_requests": "false",
        "--n_threads": "2", "--n_batch": "64", "--flash_attn": "true",
    }  # fmt: skip
    assert srv.base_url == "http://127.0.0.1:8123/v1"


def test_defaults_pick_a_free_port_and_the_file_name_as_alias(tmp_path: Path) -> None:
    srv = EmbeddedLlamaServer(tmp_path / "SmolLM2.gguf")
    assert srv.model_alias == "SmolLM2" and srv.port > 0 and srv.host == "127.0.0.1"


def test_built_from_a_models_config_entry(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    cfg = parse_models_config(
        {"models": [{"modelId": "0x" + "11" * 32, "modelName": "smol", "gguf": "m.gguf",
                     "llamaArgs": {"n_ctx": 512, "n_gpu_layers": 0}}]},
        base_dir=tmp_path,
    )  # fmt: skip
    srv = EmbeddedLlamaServer.from_config(cfg.models[0], port=9001)
    assert (srv.model_alias, srv.n_ctx, srv.port) == ("smol", 512, 9001)
    assert srv.extra_args == {"n_gpu_layers": 0}


async def test_missing_file_fails_before_spawning(tmp_path: Path) -> None:
    with pytest.raises(LlamaServerError, match="GGUF file not found"):
        await EmbeddedLlamaServer(tmp_path / "absent.gguf").start()


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama_cpp")
async def test_a_server_that_dies_on_start_reports_its_log_tail(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf file")
    srv = EmbeddedLlamaServer(bad, log_path=tmp_path / "llama.log", startup_timeout=60)
    with pytest.raises(LlamaServerError, match="exited with code") as err:
        await srv.start()
    assert str(tmp_path / "llama.log") in str(err.value)
    assert len(str(err.value).splitlines()) > 1, "the log tail is quoted"
    assert not srv.running
