"""Hardware facts a provider advertises in `provider.capabilities`.

Consumers use them to judge what a provider can serve. Probing is best effort: a
machine without NVIDIA drivers or OpenCL platforms is normal, so every failure
becomes an empty list plus a short note, never an exception. Probing loads
native libraries and can take a second, so the result is cached.
"""

from __future__ import annotations

import copy
import os
import platform
import threading
import warnings
from typing import Any

_lock = threading.Lock()
_cached: dict[str, Any] | None = None


def detect_hardware(*, refresh: bool = False) -> dict[str, Any]:
    """`{"cpu": {"model", "count"}, "ramBytes", "gpus": [...], "opencl": [...], "notes": [...]}`.

    Returns a copy of the cached probe; `refresh=True` probes again.
    """
    global _cached
    with _lock:
        if _cached is None or refresh:
            _cached = _probe()
        return copy.deepcopy(_cached)


def _probe() -> dict[str, Any]:
    notes: list[str] = []
    return {
        "cpu": _cpu(notes),
        "ramBytes": _ram_bytes(notes),
        "gpus": _nvidia_gpus(notes),
        "opencl": _opencl_devices(notes),
        "notes": notes,
    }


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def _cpu(notes: list[str]) -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if not model:
        model = platform.processor() or platform.machine()
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 0
    if not model:
        notes.append("cpu: model name unknown")
    return {"model": model, "count": count, "arch": platform.machine()}


def _ram_bytes(notes: list[str]) -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError) as exc:
        notes.append(f"ram: {_short(exc)}")
        return 0


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _nvidia_gpus(notes: list[str]) -> list[dict[str, Any]]:
    try:
        # Optional dependency, imported lazily. The `pynvml` distribution warns that
        # it is a deprecated alias of nvidia-ml-py; the module is the same.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import pynvml
    except Exception as exc:
        notes.append(f"nvml: not available ({_short(exc)})")
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        notes.append(f"nvml: no NVIDIA driver ({_short(exc)})")
        return []
    gpus: list[dict[str, Any]] = []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "index": i,
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "memoryBytes": int(memory.total),
                    "driver": driver,
                }
            )
    except Exception as exc:
        notes.append(f"nvml: {_short(exc)}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception as exc:
            notes.append(f"nvml shutdown: {_short(exc)}")
    return gpus


def _opencl_devices(notes: list[str]) -> list[dict[str, Any]]:
    try:
        import pyopencl as cl  # optional dependency, imported lazily
    except Exception as exc:
        notes.append(f"opencl: not available ({_short(exc)})")
        return []
    devices: list[dict[str, Any]] = []
    try:
        platforms = cl.get_platforms()
    except Exception as exc:
        notes.append(f"opencl: no platform ({_short(exc)})")
        return []
    for plat in platforms:
        try:
            for dev in plat.get_devices():
                devices.append(
                    {
                        "platform": str(plat.name).strip(),
                        "name": str(dev.name).strip(),
                        "type": cl.device_type.to_string(dev.type),  # type: ignore[operator]
                        "memoryBytes": int(dev.global_mem_size),
                    }
                )
        except Exception as exc:
            notes.append(f"opencl {str(getattr(plat, 'name', '?')).strip()}: {_short(exc)}")
    if not devices and not notes:
        notes.append("opencl: no devices")
    return devices
