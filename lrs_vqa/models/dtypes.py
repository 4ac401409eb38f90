"""The ``--dtype`` names every loader accepts."""

from __future__ import annotations

import torch

from lrs_vqa.models.errors import UnsupportedModelError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """A ``--dtype`` name (or a torch dtype, passed through) → the torch dtype; :class:`UnsupportedModelError`
    (a ``ValueError``) otherwise."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UnsupportedModelError(f"--dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]
