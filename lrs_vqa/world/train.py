"""``lrs-vqa train-world-model``: train the world model from scratch on a CPU (or a GPU).

Recipe (``../shared/research/world_model.md`` measured the pieces): samples mirror inference (thumbnail +
one level's tiles in the engine's token order, with row-end newline markers, the question in the chat
template, the answer and end-of-turn as the only LM targets); tile tokens are randomly thinned in half the
samples (keeping the target's) so the model stays accurate on pruned token sets; the vision tower gets dense
auxiliary supervision — every token's object category and colour from the known masks — through two linear
heads that are not part of the shipped checkpoint. AdamW, timm's cosine schedule with warm-up, timm's EMA of
the weights (the EMA is what ships), bf16 autocast on CPU.

Batch ``b`` is a pure function of ``(seed, b)`` and is made in a worker process, so a killed run resumes from
its last checkpoint at the very next batch: no step's data is repeated or skipped.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lrs_vqa.models.base import token_boxes
from lrs_vqa.world.data import (
    HOLDOUT_SEED_BASE,
    IGNORE,
    TRAIN_SEED_BASE,
    SampleOptions,
    WorldSample,
    scene_samples,
)
from lrs_vqa.world.model import WorldModelConfig, build_world_model
from pyramid.errors import LrsVqaError
from pyramid.world import CATEGORIES, COLORS

CHECKPOINT = "train-state.pt"
LOG = "train-log.jsonl"
CURVE = "training-curve.png"


class TrainingError(LrsVqaError, ValueError):
    """A bad training setup or checkpoint; one-line message."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2400
    batch: int = 16
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.05
    aux_weight: float = 0.5
    # Retrieval: the last prompt token's attention at LLM layer ``focus_layer`` (the attention scorer's
    # layer), restricted to the tile tokens and averaged over heads, should fall on the answer's tokens.
    focus_weight: float = 0.5
    focus_layer: int = 1
    ema_decay: float = 0.998
    seed: int = 0
    # Scenes per batch = batch / samples_per_scene. One scene per batch (16 samples) was measured to stall
    # learning: a batch's category and rural-or-urban answers are then all the same, and the model chases
    # the last batch's answer (hold-out category stayed at chance). Two samples a scene renders in ~0.5 s
    # in the worker, under one optimizer step.
    samples_per_scene: int = 2
    checkpoint_every: int = 200
    eval_every: int = 200
    eval_questions: int = 256
    bf16: bool = False  # autocast; measured ~20x slower than fp32 for training on this 2-core CPU
    workers: int = 1
    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    data: SampleOptions = field(default_factory=SampleOptions)

    @classmethod
    def quick(cls, seed: int = 0) -> TrainConfig:
        """A minute or two on 2 cores: a smaller model, short run (for tests and smoke checks)."""
        small = WorldModelConfig(
            vision_hidden=64, vision_layers=2, text_hidden=96, text_layers=2, text_heads=4
        )
        return cls(
            steps=60,
            batch=8,
            lr=2e-3,
            warmup=10,
            seed=seed,
            checkpoint_every=20,
            eval_every=30,
            eval_questions=32,
            model=small,
            data=replace(SampleOptions(), max_size=1344),
        )


# --- batches ------------------------------------------------------------------------------------------


class ChatCodec:
    """The chat template split around the image placeholder, and the image processor's normalisation and
    padding fill, as the engine builds prompts."""

    def __init__(self, processor: object):
        self.processor = processor
        ip = processor.image_processor  # type: ignore[attr-defined]
        self.mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.fill = tuple(round(m * 255) for m in ip.image_mean)
        self.tok = processor.tokenizer  # type: ignore[attr-defined]
        self.image_id = self.tok.convert_tokens_to_ids("<image>")
        self.eos_id = self.tok.convert_tokens_to_ids("<|im_end|>")

    def prompt_ids(self, prompt: str) -> tuple[list[int], list[int]]:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)  # type: ignore[attr-defined]
        ids = list(self.tok(text, add_special_tokens=False).input_ids)
        p = ids.index(self.image_id)
        return ids[:p], ids[p + 1 :]

    def answer_ids(self, answer: str) -> list[int]:
        return [*self.tok(answer, add_special_tokens=False).input_ids, self.eos_id]


def vision_layout(sample: WorldSample, grid: int, tile: int, first: int) -> list[int]:
    """Vision-table rows of the sample's prompt, in the engine's order: the thumbnail's real tokens (no
    newlines), then the level's kept tokens in raster order over the level's token grid with a newline
    marker (row -1) closing each token row that kept a token. ``first`` is the thumbnail's first row."""
    rows: list[int] = []
    thumb_valid = token_boxes(sample.tiles[0], grid, grid, tile)[1].numpy()
    rows += [first + q for q in range(grid * grid) if thumb_valid[q]]
    entries = []
    for t_idx, tl in enumerate(sample.tiles[1:], start=1):
        valid = token_boxes(tl, grid, grid, tile)[1].numpy() & sample.keep[t_idx]
        entries += [
            (tl.key.row * grid + q // grid, tl.key.col, t_idx, q) for q in range(grid * grid) if valid[q]
        ]
    entries.sort()
    for i, (row_key, _, t_idx, q) in enumerate(entries):
        rows.append(first + t_idx * grid * grid + q)
        if i + 1 == len(entries) or entries[i + 1][0] != row_key:
            rows.append(-1)
    return rows


@dataclass
class Batch:
    pixels: torch.Tensor  # (tiles, 3, t, t)
    cat_labels: torch.Tensor  # (tiles, grid²)
    col_labels: torch.Tensor
    source: torch.Tensor  # (B, L) token id, or vision-table row for vision positions
    is_vision: torch.Tensor  # (B, L) bool
    targets: torch.Tensor  # (B, L) next-token targets, IGNORE elsewhere
    attention: torch.Tensor  # (B, L) 1 = real position
    local: torch.Tensor  # (B, L) bool: tile tokens (not the thumbnail, not newlines)
    focus: torch.Tensor  # (B, L) bool: tile tokens over the answer's objects
    answers: list[str]
    categories: list[str]


def collate(samples: list[WorldSample], codec: ChatCodec, cfg: WorldModelConfig) -> Batch:
    g, t = cfg.grid, cfg.tile
    pixels, cats, cols, seqs, firsts = [], [], [], [], []
    first = 0
    for s in samples:
        for tl in s.tiles:
            pixels.append(tl.padded(t, codec.fill))  # the processor's mean as fill, like the engine
        valid = np.stack([token_boxes(tl, g, g, t)[1].numpy() for tl in s.tiles])
        cats.append(np.where(valid, s.category_labels, IGNORE))
        cols.append(np.where(valid, s.color_labels, IGNORE))
        vis = vision_layout(s, g, t, first)
        firsts.append(first)
        first += len(s.tiles) * g * g
        pre, post = codec.prompt_ids(s.prompt)
        ans = codec.answer_ids(s.question.answer)
        seqs.append((pre, vis, post, ans))
    newline_row = first
    length = max(len(a) + len(b) + len(c) + len(d) for a, b, c, d in seqs)
    bsz = len(samples)
    source = torch.zeros(bsz, length, dtype=torch.long)
    is_vision = torch.zeros(bsz, length, dtype=torch.bool)
    targets = torch.full((bsz, length), IGNORE, dtype=torch.long)
    attention = torch.zeros(bsz, length, dtype=torch.long)
    local = torch.zeros(bsz, length, dtype=torch.bool)
    focus = torch.zeros(bsz, length, dtype=torch.bool)
    for i, (pre, vis, post, ans) in enumerate(seqs):
        s_first, target = firsts[i], samples[i].target.reshape(-1)
        for j, r in enumerate(vis):
            if r >= s_first + g * g:  # a tile token (rows past the sample's thumbnail)
                local[i, len(pre) + j] = True
                focus[i, len(pre) + j] = bool(target[r - s_first])
        vis_rows = [newline_row if r < 0 else r for r in vis]
        row = pre + vis_rows + post + ans
        n = len(row)
        source[i, :n] = torch.tensor(row)
        is_vision[i, len(pre) : len(pre) + len(vis)] = True
        attention[i, :n] = 1
        start = n - len(ans)  # the position before each answer token predicts it
        targets[i, start - 1 : n - 1] = torch.tensor(ans)
    arr = np.stack(pixels).astype(np.float32) / 255.0
    px = (torch.from_numpy(arr).permute(0, 3, 1, 2) - codec.mean) / codec.std
    return Batch(
        px,
        torch.from_numpy(np.concatenate(cats)),
        torch.from_numpy(np.concatenate(cols)),
        source,
        is_vision,
        targets,
        attention,
        local,
        focus,
        [s.question.answer for s in samples],
        [s.question.category for s in samples],
    )


def make_samples(
    seed: int, index: int, n: int, opt: SampleOptions, per_scene: int, base: int
) -> list[WorldSample]:
    """Batch ``index``'s samples: a pure function of (seed, index)."""
    rng = np.random.default_rng([seed, index])
    out: list[WorldSample] = []
    while len(out) < n:
        scene_seed = base + int(rng.integers(2**31))
        out += scene_samples(scene_seed, min(per_scene, n - len(out)), opt, rng)
    return out


class BatchStream(torch.utils.data.IterableDataset):
    def __init__(self, cfg: TrainConfig, processor: object, start: int):
        self.cfg, self.processor, self.start = cfg, processor, start

    def __iter__(self) -> Iterator[Batch]:
        if torch.utils.data.get_worker_info() is not None:
            import cv2

            torch.set_num_threads(1)  # a renderer process: leave the cores to the optimizer
            cv2.setNumThreads(1)
        codec = ChatCodec(self.processor)
        c = self.cfg
        for b in range(self.start, c.steps):
            samples = make_samples(c.seed, b, c.batch, c.data, c.samples_per_scene, TRAIN_SEED_BASE)
            yield collate(samples, codec, c.model)


# --- model pieces --------------------------------------------------------------------------------------


class AuxHeads(torch.nn.Module):
    """Per-token category and colour heads on the vision tower's output (training only)."""

    def __init__(self, dim: int):
        super().__init__()
        self.category = torch.nn.Linear(dim, 1 + len(CATEGORIES))
        self.color = torch.nn.Linear(dim, 1 + len(COLORS))


def forward(
    model: torch.nn.Module, aux: AuxHeads, batch: Batch, focus_layer: int | None = None
) -> dict[str, torch.Tensor]:
    """Losses and answer logits of one batch, through the stock modules in the engine's order; with
    ``focus_layer``, also the focus loss on that layer's last-prompt-token attention."""
    m = model.model
    feats = m.vision_tower(batch.pixels, output_hidden_states=True).hidden_states[
        model.config.vision_feature_layer
    ]
    aux_loss = F.cross_entropy(
        aux.category(feats).flatten(0, 1).float(), batch.cat_labels.flatten(), ignore_index=IGNORE
    ) + F.cross_entropy(
        aux.color(feats).flatten(0, 1).float(), batch.col_labels.flatten(), ignore_index=IGNORE
    )
    proj = m.multi_modal_projector(feats).flatten(0, 1)
    table = torch.cat([proj, m.image_newline.view(1, -1).to(proj.dtype)])
    text = m.language_model.embed_tokens(torch.where(batch.is_vision, 0, batch.source))
    vis = table[torch.where(batch.is_vision, batch.source, 0)]
    embeds = torch.where(batch.is_vision[..., None], vis.to(text.dtype), text)
    last = (batch.targets != IGNORE).float().argmax(1)  # the position that predicts the first answer token
    captured: dict[str, object] = {}
    handle = None
    if focus_layer is not None:  # the layer's attention input, to recompute one softmax row per sample

        def grab(_mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            captured["hidden"] = kwargs.get("hidden_states", args[0] if args else None)
            captured["rope"] = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)

        attn_mod = m.language_model.layers[focus_layer].self_attn
        handle = attn_mod.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        out = m.language_model(inputs_embeds=embeds, attention_mask=batch.attention)
    finally:
        if handle is not None:
            handle.remove()
    where = batch.targets != IGNORE
    logits = model.lm_head(out.last_hidden_state[where]).float()
    lm_loss = F.cross_entropy(logits, batch.targets[where])
    res = {"lm": lm_loss, "aux": aux_loss, "logits": logits, "where": where}
    if focus_layer is not None:
        rows = last_row_attention(attn_mod, captured["hidden"], captured["rope"], last)  # type: ignore[arg-type]
        res["focus"] = focus_loss(rows, batch)
    return res


def last_row_attention(
    attn: torch.nn.Module, hidden: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], last: torch.Tensor
) -> torch.Tensor:
    """(B, heads, L) softmax attention of position ``last[b]`` over positions ``0..last[b]`` (causal), from
    the layer's own projections and rotary embedding — the row SDPA computed but does not return."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    b, length, _ = hidden.shape
    hd = attn.head_dim
    q = attn.q_proj(hidden).view(b, length, -1, hd).transpose(1, 2)  # (B, H, L, hd)
    k = attn.k_proj(hidden).view(b, length, -1, hd).transpose(1, 2)  # (B, KV, L, hd)
    cos, sin = rope
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    qi = q[torch.arange(b), :, last]  # (B, H, hd)
    logits = torch.einsum("bhd,bhld->bhl", qi, k).float() * attn.scaling
    future = torch.arange(length)[None, :] > last[:, None]
    return torch.softmax(logits.masked_fill(future[:, None, :], float("-inf")), -1)


def focus_loss(rows: torch.Tensor, batch: Batch) -> torch.Tensor:
    """-log of the attention mass the last prompt token puts on the answer's tokens (``rows``: that token's
    (B, heads, L) attention), with the softmax restricted to the tile tokens and averaged over heads — what
    the attention scorer reads."""
    losses = []
    for i in range(rows.shape[0]):
        if not batch.focus[i].any():
            continue
        local = rows[i][:, batch.local[i]]
        restricted = local / local.sum(-1, keepdim=True).clamp_min(1e-12)
        mass = restricted[:, batch.focus[i][batch.local[i]]].sum(-1).mean()
        losses.append(-torch.log(mass.clamp_min(1e-6)))
    return torch.stack(losses).mean() if losses else rows.new_zeros(())


def answer_accuracy(logits: torch.Tensor, batch: Batch) -> list[bool]:
    """Teacher-forced exact match per sample: every answer token (and the end of turn) is the argmax."""
    pred = logits.argmax(-1)
    want = batch.targets[batch.targets != IGNORE]
    rows = (batch.targets != IGNORE).sum(1).tolist()
    out, k = [], 0
    for n in rows:
        out.append(bool((pred[k : k + n] == want[k : k + n]).all()))
        k += n
    return out


# --- the loop ------------------------------------------------------------------------------------------


def _holdout(cfg: TrainConfig, codec: ChatCodec) -> list[Batch]:
    samples = make_samples(
        cfg.seed + 1,
        0,
        cfg.eval_questions,
        replace(cfg.data, drop_share=0.0, native_share=1.0),
        4,
        HOLDOUT_SEED_BASE,
    )
    return [collate(samples[i : i + 16], codec, cfg.model) for i in range(0, len(samples), 16)]


@torch.no_grad()
def evaluate(model: torch.nn.Module, aux: AuxHeads, batches: list[Batch], bf16: bool) -> dict[str, float]:
    model.eval()
    hits: dict[str, list[bool]] = {}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for b in batches:
            out = forward(model, aux, b)
            for cat, ok in zip(b.categories, answer_accuracy(out["logits"], b), strict=True):
                hits.setdefault(cat, []).append(ok)
    model.train()
    acc = {k: float(np.mean(v)) for k, v in sorted(hits.items())}
    acc["all"] = float(np.mean([x for v in hits.values() for x in v]))
    return acc


def train_world_model(
    out: str | Path,
    cfg: TrainConfig,
    *,
    progress: bool = True,
    resume: bool = True,
    stop_at: int | None = None,
) -> Path | None:
    """Train into ``out`` (resuming from ``out/train-state.pt`` when present); returns the folder of the
    final checkpoint (``out/model``: the EMA weights, loadable by ``lrs-vqa ask --model``). ``stop_at``: pause
    after that step with a checkpoint (returns None); the same call without it continues."""
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"{out} exists and is not a folder; --out names the run's folder")
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / CHECKPOINT
    torch.manual_seed(cfg.seed)
    model, processor = build_world_model(cfg.model, seed=cfg.seed)
    aux = AuxHeads(cfg.model.vision_hidden)
    params = [*model.parameters(), *aux.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = CosineLRScheduler(
        opt, t_initial=cfg.steps, lr_min=cfg.lr * 0.02, warmup_t=cfg.warmup, warmup_lr_init=cfg.lr * 0.01
    )
    ema = ModelEmaV3(model, decay=cfg.ema_decay)
    start = 0
    if resume and state_path.exists():
        start = _load_state(state_path, cfg, model, aux, opt, ema)
    codec = ChatCodec(processor)
    holdout = _holdout(cfg, codec)
    model.train()
    loader = torch.utils.data.DataLoader(
        BatchStream(cfg, processor, start),
        batch_size=None,
        num_workers=cfg.workers,
        prefetch_factor=4 if cfg.workers else None,
        persistent_workers=False,
        # spawn, not fork: OpenCV's thread pool in a forked child can deadlock
        multiprocessing_context="spawn" if cfg.workers else None,
    )
    log = (out / LOG).open("a")
    bar = _progress(progress, cfg.steps, start)
    t0 = time.time()
    step = start
    for batch in loader:
        sched.step(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            res = forward(model, aux, batch, cfg.focus_layer if cfg.focus_weight else None)
        loss = res["lm"] + cfg.aux_weight * res["aux"] + cfg.focus_weight * res.get("focus", 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(model, step=step)
        step += 1
        acc = float(np.mean(answer_accuracy(res["logits"].detach(), batch)))
        row = {
            "step": step,
            "lm": round(float(res["lm"].detach()), 4),
            "aux": round(float(res["aux"].detach()), 4),
            "focus": round(float(res["focus"].detach()), 4) if "focus" in res else None,
            "train_acc": acc,
            "lr": opt.param_groups[0]["lr"],
            "seconds": round(time.time() - t0, 1),
        }
        if step % cfg.eval_every == 0 or step == cfg.steps:
            row["holdout"] = evaluate(ema.module, aux, holdout, cfg.bf16)
        log.write(json.dumps(row) + "\n")
        log.flush()
        bar(step, row)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or step == stop_at:
            _save_state(state_path, cfg, step, model, aux, opt, ema)
        if step == stop_at:
            break
    log.close()
    if step < cfg.steps:
        return None
    final = out / "model"
    _export(ema.module, processor, final, cfg, step)
    plot_curve(out / LOG, out / CURVE)
    return final


def _progress(enabled: bool, total: int, start: int):
    if not enabled:
        return lambda step, row: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
    )
    p.start()
    task = p.add_task("", total=total, completed=start)

    def update(step: int, row: dict) -> None:
        desc = f"lm {row['lm']:.3f} aux {row['aux']:.3f}"
        if "holdout" in row:
            desc += f" hold-out {row['holdout']['all']:.2f}"
        p.update(task, completed=step, description=desc)
        if step >= total:
            p.stop()

    return update


def _fingerprint(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    for k in ("checkpoint_every", "eval_every", "workers"):
        d.pop(k)
    return d


def _save_state(path: Path, cfg: TrainConfig, step: int, model, aux, opt, ema) -> None:
    tmp = path.with_suffix(".part")
    torch.save(
        {
            "format": "lrs-vqa world-model training state",
            "config": _fingerprint(cfg),
            "step": step,
            "model": model.state_dict(),
            "aux": aux.state_dict(),
            "optimizer": opt.state_dict(),
            "ema": ema.module.state_dict(),
        },
        tmp,
    )
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact


def _load_state(path: Path, cfg: TrainConfig, model, aux, opt, ema) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != "lrs-vqa world-model training state":
            raise TrainingError(f"{path} is not a world-model training checkpoint")
        if state["config"] != _fingerprint(cfg):
            raise TrainingError(f"{path} was written with other training settings; use another --out")
        model.load_state_dict(state["model"])
        aux.load_state_dict(state["aux"])
        opt.load_state_dict(state["optimizer"])
        ema.module.load_state_dict(state["ema"])
        return int(state["step"])
    except TrainingError:
        raise
    except Exception as exc:  # a truncated or foreign file: say so in one line
        raise TrainingError(f"{path}: cannot resume from this checkpoint ({type(exc).__name__})") from None


def _export(model: torch.nn.Module, processor: object, folder: Path, cfg: TrainConfig, step: int) -> None:
    tmp = folder.with_name(folder.name + ".part")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    model.config.lrs_vqa_world_training = {"steps": step, "seed": cfg.seed, "batch": cfg.batch}
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)  # type: ignore[attr-defined]
    (tmp / "README.md").write_text(model_card(model, cfg, step, folder.parent / LOG))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)


def _commit() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return commit + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def model_card(model: torch.nn.Module, cfg: TrainConfig, step: int, log: Path) -> str:
    """The checkpoint's README: what it is, how it was made, what it scored, what it does not know."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    last = next((r for r in reversed(rows) if "holdout" in r), None)
    seconds = rows[-1]["seconds"] if rows else 0.0
    n = sum(p.numel() for p in model.parameters())
    m = cfg.model
    acc = (
        "\n".join(f"| {k} | {v:.1%} |" for k, v in last["holdout"].items())
        if last
        else "| (no evaluation logged) | |"
    )
    return f"""---
license: apache-2.0
tags: [lrs-vqa, synthetic, vision-language-model, llava-onevision]
---
# lrs-vqa world model

**Trained on the project's synthetic world scenes only** (`pyramid/world.py`: procedural land cover with
airplanes, ships, storage tanks, cars and buildings in seven saturated colours). It is **not a remote-sensing
model**: on real imagery its answers mean nothing. It exists so that the project's pipeline — the Dynamic
Image Pyramid, the coarse-to-fine loop, the token pruners — can be measured against known answers offline.

* **Architecture**: stock LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): SigLIP vision tower
  ({m.vision_layers} layers, width {m.vision_hidden}, {m.tile} px tiles, patch {m.patch}:
  {m.grid}×{m.grid} = {m.grid**2} tokens a tile), 2-layer MLP projector, `image_newline`, Qwen2 decoder
  ({m.text_layers} layers, width {m.text_hidden}, {m.text_heads} heads / {m.text_kv_heads} KV heads); the
  project's word-level tokenizer and ChatML template. {n:,} parameters, fp32 safetensors. Loads with
  `AutoProcessor` + `AutoModelForImageTextToText`, or `lrs-vqa ask IMAGE QUESTION --model world`.
* **Training**: from scratch, `lrs-vqa train-world-model --out DIR --seed {cfg.seed}` ({step} steps of
  {cfg.batch} samples, AdamW lr {cfg.lr} with timm's cosine schedule and {cfg.warmup} warm-up steps,
  weight decay {cfg.weight_decay}, timm EMA {cfg.ema_decay} — the EMA weights are these; dense auxiliary
  per-token category and colour heads (weight {cfg.aux_weight}, not part of this checkpoint); a focus
  loss (weight {cfg.focus_weight}) that puts the last prompt token's attention at LLM layer
  {cfg.focus_layer + 1} — the attention scorer's layer — on the answer's tokens; tile tokens randomly
  thinned in {cfg.data.drop_share:.0%} of samples). {seconds / 60:.0f} minutes on a 2-core CPU.
* **Data**: every sample is rendered on the fly from a scene seed at or above 2**32 drawn from
  `(seed, batch index)` (scenes of {cfg.data.min_size}-{cfg.data.max_size} px): the thumbnail plus
  1-{cfg.data.max_extra_tiles + 1}+ tiles of one pyramid level (the asked object's tiles among them), the
  question, the answer. `lrs-vqa world-bench` scenes use seeds below 2**31, so no benchmark scene was
  seen in training.
* **Code**: commit {_commit()}.

## In-training hold-out (teacher-forced exact answer, thumbnail + the target's native tiles)

{cfg.eval_questions} questions about scenes with seeds from 2**31 (never trained on). Chance: colour 1/7,
category 1/5, presence 1/2, count 1/5, rural or urban 1/2.

| category | accuracy |
|---|---|
{acc}

End-to-end accuracy by strategy (global, anyres, tiles-all, c2f, oracle) on the world benchmark's hold-out
split is in the project's `bench/RESULTS.md` ("World benchmark").
"""


def plot_curve(log: Path, png: Path) -> None:
    """Loss (smoothed) and hold-out accuracy against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = list({r["step"]: r for r in rows}.values())  # a resumed run re-logs nothing, but be safe
    steps = np.array([r["step"] for r in rows])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("lm", "aux", "focus"):
        if any(r.get(key) is None for r in rows):
            continue
        v = np.array([r[key] for r in rows])
        k = max(1, len(v) // 50)
        a.plot(steps[k - 1 :], np.convolve(v, np.ones(k) / k, mode="valid"), label=f"{key} loss")
    a.set_xlabel("step")
    a.set_yscale("log")
    a.legend()
    ev = [r for r in rows if "holdout" in r]
    for cat in sorted({c for r in ev for c in r["holdout"]}):
        b.plot([r["step"] for r in ev], [r["holdout"].get(cat, math.nan) for r in ev], marker="o", label=cat)
    b.set_xlabel("step")
    b.set_ylabel("hold-out accuracy (teacher-forced)")
    b.set_ylim(0, 1)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
