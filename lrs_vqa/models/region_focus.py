"""The trained Region Focus Module (reference card §4): N+1 decoder layers of the host LLM's own type plus a
final RMSNorm, run over the same multimodal sequence the LLM reads. The network is part of a checkpoint, so it
lives with the models; ``rfm.module.RFMScorer`` runs it as a region scorer.

Score of a local vision token = the head-averaged softmax attention of the last prompt token to it, computed
by layer ``N`` on the output of layers ``0..N-1``, with the softmax restricted to the local keys (§4.3). The
final norm exists in the released checkpoints but does not enter the score.

Two ways to get one:

* the released LRS-VQA checkpoints (``lrs_vqa.models.largeimg_checkpoint.load_released``) carry trained
  RFM weights;
* :meth:`RegionFocusModule.from_host` builds the paper's initialisation from any host LLM: RFM layer ``i``
  is a copy of LLM layer ``([llm_layer_list[0] - 1] + llm_layer_list)[i]`` and the norm a copy of the LLM's
  final norm (§4.1). Untrained, but it shows what the trained module starts from.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from lrs_vqa.engine.taps import TAP_ATTENTION

DEFAULT_RFM_LAYERS = 4  # N in the paper's released configuration (heuristic, reference card §4.2)


def host_classes(config: object) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    """(decoder layer, RMSNorm, rotary embedding) classes of a Qwen2 or Llama text config."""
    model_type = getattr(config, "model_type", "")
    if model_type == "qwen2":
        from transformers.models.qwen2 import modeling_qwen2 as m

        return m.Qwen2DecoderLayer, m.Qwen2RMSNorm, m.Qwen2RotaryEmbedding
    if model_type == "llama":
        from transformers.models.llama import modeling_llama as m

        return m.LlamaDecoderLayer, m.LlamaRMSNorm, m.LlamaRotaryEmbedding
    raise ValueError(
        f"no RFM layer type for text model type {model_type!r}; pass the host's classes (qwen2 and llama "
        "are built in)"
    )


def _text_model(host: object) -> nn.Module:
    """The decoder stack (``layers``, ``norm``, ``rotary_emb``, ``config``) of an adapter or a model."""
    for path in ("text_model", "model.language_model", "language_model", "model", ""):
        obj = host
        for name in filter(None, path.split(".")):
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if obj is not None and all(hasattr(obj, a) for a in ("layers", "norm", "rotary_emb", "config")):
            return obj  # type: ignore[return-value]
    raise TypeError(f"cannot find a decoder stack (layers, norm, rotary_emb) in {type(host).__name__}")


class RegionFocusModule(nn.Module):
    """``layers``: N+1 decoder layers of the host type; ``norm``: the host RMSNorm; ``rotary_emb``: the
    host's rotary embedding built from the same config (kept in fp32 by :meth:`place`).

    The layers use the engine's tap attention (SDPA plus attention rows on request), so
    :func:`rfm.attention_rows.score_local_view` can read the score off the last layer.
    """

    def __init__(
        self,
        text_config: object,
        n_layers: int,
        *,
        layer_cls: type[nn.Module] | None = None,
        norm_cls: type[nn.Module] | None = None,
        rotary_cls: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"an RFM needs N >= 1 (N+1 layers), got N={n_layers}")
        config = copy.deepcopy(text_config)
        config._attn_implementation = TAP_ATTENTION  # type: ignore[attr-defined]
        config.num_hidden_layers = n_layers + 1  # type: ignore[attr-defined]
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and types:
            config.layer_types = [types[min(i, len(types) - 1)] for i in range(n_layers + 1)]  # type: ignore[attr-defined]
        if layer_cls is None or norm_cls is None or rotary_cls is None:
            default = host_classes(config)
            layer_cls = layer_cls or default[0]
            norm_cls = norm_cls or default[1]
            rotary_cls = rotary_cls or default[2]
        self.config = config
        self.n_layers = n_layers
        self.llm_layer_list: tuple[int, ...] | None = None  # the LLM layers the RFM layers mirror, if known
        self._rotary_cls = rotary_cls
        self.layers = nn.ModuleList([layer_cls(config, i) for i in range(n_layers + 1)])  # type: ignore[call-arg]
        self.norm = norm_cls(config.hidden_size, eps=config.rms_norm_eps)  # type: ignore[call-arg, attr-defined]
        self.rotary_emb = rotary_cls(config=config)  # type: ignore[call-arg]

    def rebuild_rotary(self, device: torch.device | str | None = None) -> None:
        """Recompute the rotary tables (non-persistent buffers; needed after building on the meta device)."""
        with torch.device(device or "cpu"):
            self.rotary_emb = self._rotary_cls(config=self.config)  # type: ignore[call-arg]

    def place(self, device: torch.device | str, dtype: torch.dtype) -> RegionFocusModule:
        """Move to ``device``; cast the weights (not the rotary tables, which stay fp32) to ``dtype``."""
        self.layers.to(device=device, dtype=dtype)
        self.norm.to(device=device, dtype=dtype)
        self.rotary_emb.to(device=device)
        return self

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    @classmethod
    def from_host(
        cls, host: object, n_layers: int | None = None, llm_layer_list: Sequence[int] | None = None
    ) -> RegionFocusModule:
        """The paper's initialisation from a host LLM (an adapter, a VLM or a decoder stack).

        ``llm_layer_list`` (1-based LLM layer ids the RFM layers mirror, as in the released configs):
        RFM layer ``i`` copies LLM layer ``([llm_layer_list[0] - 1] + llm_layer_list)[i]``. Default: the
        ``n_layers`` consecutive ids ``1..N``, i.e. the RFM starts as a copy of the LLM's first N+1 layers
        (then its score equals the host's own attention scorer with N+1 layers). Weights are copied, on
        the host's device and dtype.
        """
        text = _text_model(host)
        if llm_layer_list is None:
            n = DEFAULT_RFM_LAYERS if n_layers is None else n_layers
            llm_layer_list = list(range(1, n + 1))
        llm_layer_list = [int(i) for i in llm_layer_list]
        if not llm_layer_list:
            raise ValueError("llm_layer_list is empty")
        if n_layers is not None and n_layers != len(llm_layer_list):
            raise ValueError(f"n_layers={n_layers} but llm_layer_list has {len(llm_layer_list)} entries")
        sources = [llm_layer_list[0] - 1, *llm_layer_list]
        depth = len(text.layers)
        bad = [s for s in sources if not 0 <= s < depth]
        if bad:
            raise ValueError(f"RFM source layers {bad} are outside the host's 0..{depth - 1}")
        config = copy.deepcopy(text.config)
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and len(types) == depth:
            config.layer_types = [types[s] for s in sources]
        first = next(text.parameters())
        with torch.device("meta"):
            rfm = cls(
                config,
                len(llm_layer_list),
                layer_cls=type(text.layers[0]),
                norm_cls=type(text.norm),
                rotary_cls=type(text.rotary_emb),
            )
        state = {
            f"layers.{i}.{k}": v.detach().clone()
            for i, s in enumerate(sources)
            for k, v in text.layers[s].state_dict().items()
        }
        state.update({f"norm.{k}": v.detach().clone() for k, v in text.norm.state_dict().items()})
        rfm.load_state_dict(state, strict=True, assign=True)
        rfm.rebuild_rotary(first.device)
        rfm.llm_layer_list = tuple(llm_layer_list)
        return rfm.eval()
