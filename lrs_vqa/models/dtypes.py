"""The ``--dtype`` names every loader accepts, and ``auto``: the one place that decides bf16 or fp32.

``auto`` picks bf16 only where the hardware computes it natively — a CUDA GPU of compute capability 8.0 or
later (Ampere on: bf16 tensor cores), or a CPU whose flags include ``amx_bf16`` or ``avx512_bf16`` (oneDNN
then runs bf16 matmuls in hardware) — and fp32 everywhere else, where bf16 is converted in software and is
slower than fp32, not faster. Every entry point (``ask``/``eval``/``batch``, the web app, ``answer()``,
``load_adapter``) resolves through :func:`resolve_dtype`, so records name the dtype used, never ``auto``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lrs_vqa.models.errors import UnsupportedModelError

AUTO = "auto"

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# CPU feature flags (as /proc/cpuinfo spells them) under which bf16 matmuls run in hardware.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})

# Overrides the flags read from /proc/cpuinfo (space-separated; empty: none). The test suite pins it empty so
# `auto` resolves the same on every host, in its subprocesses too.
CPU_FLAGS_ENV = "LRS_VQA_CPU_FLAGS"

_CPUINFO = Path("/proc/cpuinfo")


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """A ``--dtype`` name (or a torch dtype, passed through) → the torch dtype; :class:`UnsupportedModelError`
    (a ``ValueError``) otherwise. ``auto`` must be resolved first (:func:`resolve_dtype`)."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UnsupportedModelError(f"--dtype must be one of {[AUTO, *sorted(DTYPES)]}, got {name!r}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``: the name records carry."""
    return str(dtype).removeprefix("torch.")


def host_cpu_flags(cpuinfo: Path = _CPUINFO) -> frozenset[str]:
    """This CPU's feature flags: ``$LRS_VQA_CPU_FLAGS`` when set, else the first ``flags`` line of
    ``/proc/cpuinfo``; none where neither exists (macOS, Windows: ``auto`` is fp32 there)."""
    pinned = os.environ.get(CPU_FLAGS_ENV)
    if pinned is not None:
        return frozenset(pinned.split())
    try:
        with cpuinfo.open() as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cuda_runs_bf16(device: str) -> bool:
    """The CUDA device has bf16 tensor cores (capability ≥ 8.0); False where this process sees no CUDA."""
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)


def resolve_dtype(
    name: str, device: str = "cpu", *, cpu_flags: frozenset[str] | None = None, cuda_bf16: bool | None = None
) -> str:
    """The dtype to load in: an explicit name unchanged (checked), ``auto`` → ``"bfloat16"`` where ``device``
    runs bf16 natively, else ``"float32"``. ``cpu_flags`` / ``cuda_bf16`` stand in for the host's (tests)."""
    if name != AUTO:
        torch_dtype(name)  # a bad name fails here, before anything loads
        return name
    kind = device.split(":", 1)[0]
    if kind == "cuda":
        native = cuda_runs_bf16(device) if cuda_bf16 is None else cuda_bf16
    elif kind == "cpu":
        native = bool((host_cpu_flags() if cpu_flags is None else cpu_flags) & BF16_CPU_FLAGS)
    else:  # mps and others: no measurement says bf16 is faster there
        native = False
    return "bfloat16" if native else "float32"
