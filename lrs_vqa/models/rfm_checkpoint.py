"""The folder format of a trained Region Focus Module (``lrs-vqa train-rfm`` writes it): ``rfm.json`` (host,
layer list, shapes, how it was trained) and ``rfm.safetensors`` (the RFM's layers and norm only).

A model folder that holds such a folder under ``rfm/`` ships its RFM: :func:`attached_rfm` finds it and the
model loader hands it to the adapter (``adapter.region_focus_module``), so ``--scorer auto`` uses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrs_vqa.models.region_focus import RegionFocusModule
from pyramid.errors import LrsVqaError

if TYPE_CHECKING:
    from lrs_vqa.models.base import ModelAdapter

FORMAT = "lrs-vqa rfm/1"
WEIGHTS = "rfm.safetensors"
CONFIG = "rfm.json"
ATTACHED = "rfm"  # the sub-folder of a model folder that holds its RFM


class RFMCheckpointError(LrsVqaError, ValueError):
    """An RFM folder that cannot be read or does not fit the host; one-line message."""


def load_rfm_weights(rfm: RegionFocusModule, folder: str | Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / WEIGHTS))
    missing, unexpected = rfm.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise RFMCheckpointError(f"{folder}: RFM weights do not fit this host")


def write_rfm(
    folder: str | Path,
    rfm: RegionFocusModule,
    adapter: ModelAdapter,
    *,
    steps: int,
    training: dict[str, Any] | None,
    suffix: str = "",
) -> Path:
    """Write ``rfm`` as an RFM folder for ``adapter`` (``steps`` optimiser steps, ``training`` its settings,
    None for an untrained copy of the host's layers). With a ``suffix`` the files get it appended, for a
    caller that renames them into place together (atomic checkpoints)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in rfm.state_dict().items() if "rotary" not in k}
    save_file(weights, str(folder / (WEIGHTS + suffix)))
    meta = {
        "format": FORMAT,
        "host": str(adapter.source),
        "llm_layer_list": list(rfm.llm_layer_list or ()),
        "hidden_size": int(rfm.config.hidden_size),  # type: ignore[attr-defined]
        "host_layers": len(adapter.decoder.layers),
        "steps": steps,
        "training": training,
    }
    (folder / (CONFIG + suffix)).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def load_rfm(folder: str | Path, adapter: ModelAdapter) -> RegionFocusModule:
    """An RFM trained for ``adapter``'s host; a checkpoint for another host (hidden size or depth) is a
    one-line error."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError):
        raise RFMCheckpointError(f"{folder}: not an RFM checkpoint (no readable {CONFIG})") from None
    if meta.get("format") != FORMAT:
        raise RFMCheckpointError(f"{folder}: not an {FORMAT} checkpoint")
    hidden = int(adapter.decoder.config.hidden_size)
    depth = len(adapter.decoder.layers)
    if meta.get("hidden_size") != hidden or meta.get("host_layers") != depth:
        raise RFMCheckpointError(
            f"{folder} was trained for a host with hidden size {meta.get('hidden_size')} and "
            f"{meta.get('host_layers')} layers; this model has {hidden} and {depth}"
        )
    rfm = RegionFocusModule.from_host(adapter, llm_layer_list=meta["llm_layer_list"])
    load_rfm_weights(rfm, folder)
    return rfm.eval()


def attached_rfm(source: str | Path) -> Path | None:
    """The RFM folder a local model folder ships (``<source>/rfm/rfm.json``), or None."""
    folder = Path(source) / ATTACHED
    return folder if (folder / CONFIG).is_file() else None
