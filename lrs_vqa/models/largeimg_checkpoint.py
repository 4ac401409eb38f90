"""Loading the released LRS-VQA checkpoints (``ll-13/llava-largeimg-Qwen2-7B``,
``ll-13/llava-largeimg-Vicuna-7B``) in their original LLaVA layout, key for key (reference card §4.2, §13).

Every key of the checkpoint goes to exactly one place:

* ``model.embed_tokens.*``, ``model.layers.*``, ``model.norm.*``, ``lm_head.*`` → a stock
  ``Qwen2ForCausalLM`` / ``LlamaForCausalLM`` (same key names);
* ``model.mm_projector.mlp_projector.{0,2}.*`` → the ``Linear → GELU → Linear`` projector;
* ``model.mm_projector.token_pruner.layers.{i}.*`` and ``.norm.*`` →
  :class:`lrs_vqa.models.region_focus.RegionFocusModule` (N+1 layers);
* ``model.image_newline`` → the row-end newline embedding;
* ``model.vision_tower.vision_tower.vision_model.*`` → a stock ``CLIPVisionModel`` if present; otherwise the
  tower named by ``mm_vision_tower`` is loaded from its own hub id or folder.

Loading is strict: a missing or unexpected key, or a shape that does not match the config, raises
:class:`lrs_vqa.models.errors.ModelLoadError` with a one-line message naming them. The only keys skipped
are derived buffers some savers persist (``*.rotary_emb.inv_freq``, ``*.embeddings.position_ids``). N is
read from the checkpoint keys and checked against ``llm_layer_list`` when the config has one.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from lrs_vqa.engine.taps import TAP_ATTENTION
from lrs_vqa.models.errors import ModelLoadError
from lrs_vqa.models.region_focus import RegionFocusModule

RFM_PROJECTOR_TYPE = "mlp2x_gelu_after_distillpruner"
POOL_MODES = ("bilinear", "average", "max")

PROJECTOR_PREFIX = "model.mm_projector.mlp_projector."
RFM_PREFIX = "model.mm_projector.token_pruner."
NEWLINE_KEY = "model.image_newline"
TOWER_PREFIX = "model.vision_tower.vision_tower."
DERIVED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.original_inv_freq", "embeddings.position_ids")

_HUB_PATTERNS = [
    "*.json",
    "*.safetensors",
    "pytorch_model*.bin",
    "tokenizer*",
    "*.model",
    "*.txt",
    "*.jinja",
]


@dataclass(frozen=True)
class LargeImgSettings:
    """The config fields the released inference path depends on, validated."""

    llm_type: str  # "qwen2" | "llama"
    n_rfm: int  # N: the RFM has N+1 layers
    llm_layer_list: tuple[int, ...] | None
    vision_tower: str  # mm_vision_tower: hub id or local folder
    select_layer: int  # mm_vision_select_layer (hidden_states index)
    mm_hidden_size: int
    patch_merge_type: str
    pool_mode: str  # mm_spatial_pool_mode for local tiles
    pool_stride: int
    block_size: int  # slice_block_size: tile size in pixels
    max_length: int | None  # tokenizer_model_max_length (the released code truncates beyond it)
    tower_from_checkpoint: bool = False


class LargeImgModel(nn.Module):
    """All parts of a released checkpoint: ``llm`` (stock causal LM), ``vision_tower`` (stock CLIP),
    ``mm_projector``, ``image_newline`` and ``rfm``."""

    def __init__(
        self,
        llm: nn.Module,
        vision_tower: nn.Module,
        mm_projector: nn.Module,
        image_newline: torch.Tensor,
        rfm: RegionFocusModule,
        settings: LargeImgSettings,
        generation_config: object,
    ) -> None:
        super().__init__()
        self.llm = llm
        self.vision_tower = vision_tower
        self.mm_projector = mm_projector
        self.image_newline = nn.Parameter(image_newline, requires_grad=False)
        self.rfm = rfm
        self.settings = settings
        self.generation_config = generation_config

    def released_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the released checkpoint's key names (tower keys only if it came from there)."""
        out = dict(self.llm.state_dict())
        out.update({PROJECTOR_PREFIX + k: v for k, v in self.mm_projector.state_dict().items()})
        out.update({RFM_PREFIX + k: v for k, v in self.rfm.state_dict().items()})
        out[NEWLINE_KEY] = self.image_newline.data
        if self.settings.tower_from_checkpoint:
            inner = _tower_inner_prefix(self.vision_tower)
            out.update({TOWER_PREFIX + inner + k: v for k, v in self.vision_tower.state_dict().items()})
        return out


def _tower_inner_prefix(tower: nn.Module) -> str:
    """``"vision_model."`` where the stock CLIPVisionModel no longer nests its modules under it (the
    released keys, saved with transformers 4.37, always do)."""
    return "" if any(k.startswith("vision_model.") for k in tower.state_dict()) else "vision_model."


def make_projector(in_features: int, hidden: int) -> nn.Sequential:
    """``mlp2x_gelu``: Linear(vision → hidden), GELU, Linear(hidden → hidden) (keys ``0.*``, ``2.*``)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, hidden))


# -- config -------------------------------------------------------------------------------------------------


def is_released_layout(config: dict) -> bool:
    """An original-LLaVA-layout config (``mm_*`` fields on the LLM config), not a stock HF LLaVA one."""
    return isinstance(config, dict) and ("mm_projector_type" in config or "mm_vision_tower" in config)


def released_config(source: str | Path) -> dict | None:
    """``config.json`` of a local folder or hub id, or None where it cannot be read (then it is not ours)."""
    path = Path(source)
    if path.is_dir():
        file = path / "config.json"
    else:
        try:
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(str(source), "config.json"))
        except Exception:
            return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _llm_type(config: dict) -> str:
    arch = " ".join(config.get("architectures") or []) + " " + str(config.get("model_type", ""))
    return "qwen2" if "qwen" in arch.lower() else "llama"  # the released code's switch (card §4.1)


def _layer_list(value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        parsed = ast.literal_eval(value) if isinstance(value, str) else value
        return tuple(int(i) for i in parsed)  # type: ignore[union-attr]
    except (ValueError, TypeError, SyntaxError):
        raise ModelLoadError(f"llm_layer_list {value!r} is not a list of layer ids") from None


def read_settings(config: dict, source: str = "") -> LargeImgSettings:
    """Validate the config fields the released inference path needs (N is filled in from the weights)."""
    where = f"{source}: " if source else ""
    ptype = config.get("mm_projector_type")
    if ptype != RFM_PROJECTOR_TYPE:
        raise ModelLoadError(
            f"{where}mm_projector_type is {ptype!r}; an LRS-VQA checkpoint with a Region Focus Module has "
            f"{RFM_PROJECTOR_TYPE!r}"
        )
    tower = config.get("mm_vision_tower") or config.get("vision_tower")
    if not tower:
        raise ModelLoadError(f"{where}config has no mm_vision_tower (the CLIP tower to load)")
    select = config.get("mm_vision_select_layer", -2)
    if not isinstance(select, int) or isinstance(select, bool):
        raise ModelLoadError(f"{where}mm_vision_select_layer {select!r} is not supported (one layer index)")
    feature = config.get("mm_vision_select_feature", "patch")
    if feature != "patch":
        raise ModelLoadError(f"{where}mm_vision_select_feature {feature!r} is not supported (only 'patch')")
    hidden = config.get("mm_hidden_size")
    if not isinstance(hidden, int):
        raise ModelLoadError(f"{where}mm_hidden_size {hidden!r} is not an integer")
    merge = str(config.get("mm_patch_merge_type", "flat"))
    if not (merge.startswith("spatial") and "unpad" in merge):
        raise ModelLoadError(
            f"{where}mm_patch_merge_type {merge!r}: the pyramid path needs 'spatial…unpad' (newline markers)"
        )
    pool = config.get("mm_spatial_pool_mode") or "bilinear"
    if pool not in POOL_MODES:
        raise ModelLoadError(f"{where}mm_spatial_pool_mode {pool!r}; local tiles need one of {POOL_MODES}")
    stride = config.get("mm_spatial_pool_stride") or 2
    block = config.get("slice_block_size") or 336
    if not isinstance(stride, int) or stride < 1 or not isinstance(block, int) or block < 1:
        raise ModelLoadError(f"{where}bad mm_spatial_pool_stride {stride!r} or slice_block_size {block!r}")
    max_length = config.get("tokenizer_model_max_length")
    return LargeImgSettings(
        llm_type=_llm_type(config),
        n_rfm=0,
        llm_layer_list=_layer_list(config.get("llm_layer_list")),
        vision_tower=str(tower),
        select_layer=select,
        mm_hidden_size=hidden,
        patch_merge_type=merge,
        pool_mode=pool,
        pool_stride=stride,
        block_size=block,
        max_length=int(max_length) if max_length else None,
    )


def _text_config(config: dict, llm_type: str) -> object:
    from transformers import LlamaConfig, Qwen2Config

    cls = Qwen2Config if llm_type == "qwen2" else LlamaConfig
    fields = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "auto_map")}
    return cls.from_dict(fields)


# -- weights ------------------------------------------------------------------------------------------------


def resolve_checkpoint(source: str | Path) -> Path:
    """A local folder as is; a hub id through the hub cache (downloading config, tokenizer and weights)."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{source} is a file; give the checkpoint folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source), allow_patterns=_HUB_PATTERNS))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelLoadError(
            f"cannot load model {str(source)!r}: {first} (no local folder of that name; hub downloads need "
            "a network)"
        ) from None


def _weight_files(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError):
                raise ModelLoadError(f"{index} is not a valid shard index") from None
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ModelLoadError(f"{folder}: shard(s) named in {index_name} are missing: {missing[:4]}")
            return files
    single = [folder / "model.safetensors", folder / "pytorch_model.bin"]
    for file in single:
        if file.is_file():
            return [file]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ModelLoadError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    return files


def read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint under its stored name (shards merged; duplicates are an error)."""
    out: dict[str, torch.Tensor] = {}
    for file in _weight_files(Path(folder)):
        try:
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                part = load_file(str(file))
            else:
                part = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot read {file.name}: {str(exc).splitlines()[0][:200]}") from None
        if not isinstance(part, dict):
            raise ModelLoadError(f"{file.name} does not hold a state dict")
        dup = sorted(set(part) & set(out))
        if dup:
            raise ModelLoadError(f"{file.name} repeats keys of another shard: {_names(dup)}")
        out.update(part)
    return out


def _names(keys: Iterable[str], k: int = 4) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - k} more)" if len(keys) > k else ""
    return ", ".join(keys[:k]) + more


_PARTS = (("projector", PROJECTOR_PREFIX), ("rfm", RFM_PREFIX), ("tower", TOWER_PREFIX))


def split_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Route released keys to parts (``llm``, ``projector``, ``rfm``, ``newline``, ``tower``) under the
    parts' own key names; also return the keys that belong to no part."""
    parts: dict[str, dict[str, torch.Tensor]] = {
        p: {} for p in ("llm", "projector", "rfm", "newline", "tower")
    }
    unexpected: list[str] = []
    for key, tensor in state.items():
        if key.endswith(DERIVED_SUFFIXES):
            continue
        if key == NEWLINE_KEY:
            parts["newline"][""] = tensor
            continue
        for part, prefix in _PARTS:
            if key.startswith(prefix):
                parts[part][key[len(prefix) :]] = tensor
                break
        else:
            if key.startswith(("model.mm_", "model.vision_", "model.image_")):
                unexpected.append(key)
            else:
                parts["llm"][key] = tensor
    return parts, unexpected


def rfm_depth(rfm_keys: Iterable[str]) -> int:
    """N from the RFM keys: layers 0..N must all be there."""
    ids = {int(m.group(1)) for k in rfm_keys if (m := re.match(r"layers\.(\d+)\.", k))}
    if not ids:
        raise ModelLoadError(
            f"no {RFM_PREFIX}layers.* keys: not an LRS-VQA checkpoint with a Region Focus Module"
        )
    if ids != set(range(max(ids) + 1)):
        gaps = sorted(set(range(max(ids) + 1)) - ids)
        raise ModelLoadError(f"{RFM_PREFIX}layers.* skips layer(s) {gaps}")
    if len(ids) < 2:
        raise ModelLoadError(f"{RFM_PREFIX}layers.* has only one layer; an RFM has N+1 >= 2")
    return len(ids) - 1


class _Mismatch:
    """Missing / unexpected / wrong-shape keys collected over all parts, reported once."""

    def __init__(self) -> None:
        self.missing: list[str] = []
        self.unexpected: list[str] = []
        self.shapes: list[str] = []

    def check(
        self, given: dict[str, torch.Tensor], module: nn.Module, prefix: str, optional: Iterable[str] = ()
    ) -> None:
        expected = module.state_dict()
        optional = set(optional)
        self.missing += [prefix + k for k in expected if k not in given and k not in optional]
        self.unexpected += [prefix + k for k in given if k not in expected]
        self.shapes += [
            f"{prefix}{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
            for k, v in given.items()
            if k in expected and tuple(v.shape) != tuple(expected[k].shape)
        ]

    def raise_if_any(self, source: str) -> None:
        problems = []
        if self.missing:
            problems.append(f"missing {_names(self.missing)}")
        if self.unexpected:
            problems.append(f"unexpected {_names(self.unexpected)}")
        if self.shapes:
            problems.append(f"shape mismatch {_names(self.shapes, 2)}")
        if problems:
            raise ModelLoadError(
                f"{source}: checkpoint does not match the LRS-VQA layout: {'; '.join(problems)}"
            )


def _cast(part: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in part.items()}


def _no_meta(module: nn.Module, what: str) -> None:
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise ModelLoadError(f"{what}: tensors left unloaded: {_names(left)}")


def _build_llm(text_config: object, weights: dict[str, torch.Tensor], check: _Mismatch) -> nn.Module:
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    cls = Qwen2ForCausalLM if text_config.model_type == "qwen2" else LlamaForCausalLM  # type: ignore[attr-defined]
    with torch.device("meta"):
        llm = cls(text_config)
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    check.check(weights, llm, "", optional=("lm_head.weight",) if tied else ())
    return llm


def _load_tower(
    settings: LargeImgSettings, weights: dict[str, torch.Tensor], dtype: torch.dtype
) -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    name = settings.vision_tower
    try:
        if weights:
            tower = CLIPVisionModel(CLIPVisionConfig.from_pretrained(name))
        else:
            tower = CLIPVisionModel.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelLoadError(f"cannot load the vision tower mm_vision_tower={name!r}: {first}") from None
    tower.set_attn_implementation(TAP_ATTENTION)
    return tower.to(dtype)


def load_released(
    source: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[LargeImgModel, object]:
    """Load a released LRS-VQA checkpoint (hub id or local folder) → (model, tokenizer)."""
    from transformers import AutoTokenizer, GenerationConfig

    folder = resolve_checkpoint(source)
    config = released_config(folder)
    if config is None:
        raise ModelLoadError(f"{source}: no readable config.json")
    if not is_released_layout(config):
        raise ModelLoadError(
            f"{source}: config.json has no mm_* fields; not an original-LLaVA-layout checkpoint"
        )
    settings = read_settings(config, str(source))
    parts, unexpected = split_state_dict(read_state_dict(folder))
    n_rfm = rfm_depth(parts["rfm"])
    if settings.llm_layer_list is not None and len(settings.llm_layer_list) != n_rfm:
        raise ModelLoadError(
            f"{source}: the checkpoint has {n_rfm + 1} RFM layers (N={n_rfm}) but llm_layer_list "
            f"{list(settings.llm_layer_list)} has {len(settings.llm_layer_list)} entries"
        )
    settings = replace(settings, n_rfm=n_rfm, tower_from_checkpoint=bool(parts["tower"]))
    text_config = _text_config(config, settings.llm_type)

    check = _Mismatch()
    check.unexpected += unexpected
    llm = _build_llm(text_config, parts["llm"], check)
    hidden = text_config.hidden_size  # type: ignore[attr-defined]
    with torch.device("meta"):
        projector = make_projector(settings.mm_hidden_size, hidden)
        rfm = RegionFocusModule(text_config, n_rfm)
    check.check(parts["projector"], projector, PROJECTOR_PREFIX)
    check.check(parts["rfm"], rfm, RFM_PREFIX)
    newline = parts["newline"].get("")
    if newline is None:
        check.missing.append(NEWLINE_KEY)
    elif tuple(newline.shape) != (hidden,):
        check.shapes.append(f"{NEWLINE_KEY} {tuple(newline.shape)} != ({hidden},)")
    check.raise_if_any(str(source))
    assert newline is not None

    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    llm_weights = {k: v for k, v in parts["llm"].items() if not (tied and k == "lm_head.weight")}
    llm.load_state_dict(_cast(llm_weights, dtype), strict=not tied, assign=True)
    if tied:
        llm.tie_weights()
    llm.model.rotary_emb = type(llm.model.rotary_emb)(config=llm.config)  # non-persistent: recompute
    llm.set_attn_implementation(TAP_ATTENTION)
    projector.load_state_dict(_cast(parts["projector"], dtype), strict=True, assign=True)
    rfm.load_state_dict(_cast(parts["rfm"], dtype), strict=True, assign=True)
    rfm.rebuild_rotary()
    rfm.llm_layer_list = settings.llm_layer_list
    for module, what in ((llm, "LLM"), (projector, "projector"), (rfm, "RFM")):
        _no_meta(module, what)

    tower = _load_tower(settings, parts["tower"], dtype)
    if parts["tower"]:
        inner = _tower_inner_prefix(tower)
        given = {k.removeprefix(inner): v for k, v in parts["tower"].items()}
        unprefixed = sorted(TOWER_PREFIX + k for k in parts["tower"] if not k.startswith(inner))
        tower_check = _Mismatch()
        tower_check.unexpected += unprefixed
        tower_check.check(given, tower, TOWER_PREFIX + inner)
        tower_check.raise_if_any(str(source))
        tower.load_state_dict(_cast(given, dtype), strict=True)

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), config=text_config)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelLoadError(f"{source}: cannot load the tokenizer: {first}") from None
    try:
        generation = GenerationConfig.from_pretrained(str(folder))
    except (OSError, ValueError):
        generation = GenerationConfig(
            bos_token_id=text_config.bos_token_id,  # type: ignore[attr-defined]
            eos_token_id=text_config.eos_token_id,  # type: ignore[attr-defined]
            pad_token_id=getattr(text_config, "pad_token_id", None),
        )
    model = LargeImgModel(llm, tower, projector, newline.to(dtype), rfm, settings, generation)
    model.to(device)
    return model.eval(), tokenizer
