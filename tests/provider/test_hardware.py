"""detect_hardware: best-effort facts that never raise, whatever drivers are missing."""

from __future__ import annotations

import json
import sys
import types

import pytest

from proxy_router.provider import hardware


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "_cached", None)


def test_reports_cpu_ram_and_device_lists_as_json() -> None:
    facts = hardware.detect_hardware()
    assert facts["cpu"]["count"] >= 1 and isinstance(facts["cpu"]["model"], str)
    assert facts["ramBytes"] > 0
    assert isinstance(facts["gpus"], list) and isinstance(facts["opencl"], list)
    assert all(isinstance(n, str) for n in facts["notes"])
    json.dumps(facts)


def test_missing_libraries_give_empty_lists_and_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "pyopencl", None)
    facts = hardware.detect_hardware(refresh=True)
    assert facts["gpus"] == [] and facts["opencl"] == []
    assert any(n.startswith("nvml: not available") for n in facts["notes"])
    assert any(n.startswith("opencl: not available") for n in facts["notes"])


def test_driver_failures_give_empty_lists_and_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("driver mismatch")

    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = boom  # type: ignore[attr-defined]
    cl = types.ModuleType("pyopencl")
    cl.get_platforms = boom  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setitem(sys.modules, "pyopencl", cl)
    facts = hardware.detect_hardware(refresh=True)
    assert facts["gpus"] == [] and facts["opencl"] == []
    assert "nvml: no NVIDIA driver (RuntimeError: driver mismatch)" in facts["notes"]
    assert any(n.startswith("opencl: no platform") for n in facts["notes"])


def test_a_working_gpu_is_described(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlSystemGetDriverVersion = lambda: b"550.54"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: 1  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetName = lambda h: "NVIDIA L4"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=24 << 30)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    facts = hardware.detect_hardware(refresh=True)
    assert facts["gpus"] == [
        {"index": 0, "name": "NVIDIA L4", "memoryBytes": 24 << 30, "driver": "550.54"}
    ]


def test_probes_once_and_hands_out_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = hardware._probe

    def counting() -> dict:
        nonlocal calls
        calls += 1
        return real()

    monkeypatch.setattr(hardware, "_probe", counting)
    first = hardware.detect_hardware()
    first["gpus"].append("tampered")
    second = hardware.detect_hardware()
    assert calls == 1 and "tampered" not in second["gpus"]
