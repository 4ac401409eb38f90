"""Stage progress without touching ``answer()``: an observing hook on the vision and LLM hook points reports
each encoded level (overview → scoring → level k …) and the start of the answer, and ``run_in_thread``
streams those events while ``answer()`` runs in a worker thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class StageEvent:
    stage: str  # "level" (a level was encoded; its scoring follows) | "answer" (the LLM prefill started)
    level: int = -1  # -1: the global thumbnail
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # level-0 extents of the encoded tiles


class StageHook:
    """Observes, never selects: returns ``None`` at every hook point."""

    def __init__(self, emit: Callable[[StageEvent], None]) -> None:
        self._emit = emit
        self._answering = False

    # -- vision side (VisionHook) --
    def vision_tap_rows(self) -> dict[int, Any]:
        return {}

    def after_encoder(self, feats: torch.Tensor, meta: Any, ctx: Any) -> None:
        boxes: list[tuple[float, float, float, float]] = []
        if meta.boxes.numel():
            for t in torch.unique(ctx.tile_index).tolist():
                b = meta.boxes[ctx.tile_index == t]
                x0, y0 = b[:, 0].min().item(), b[:, 1].min().item()
                x1, y1 = b[:, 2].max().item(), b[:, 3].max().item()
                boxes.append((x0, y0, x1, y1))
        self._emit(StageEvent("level", int(ctx.level), tuple(boxes)))
        return None

    def after_projector(self, embeds: torch.Tensor, meta: Any, ctx: Any) -> None:
        return None

    # -- LLM side (LayerHook) --
    def llm_tap_rows(self, view: Any) -> None:
        return None

    def before_layer(self, view: Any) -> None:
        if not self._answering:
            self._answering = True
            self._emit(StageEvent("answer"))
        return None


@dataclass(frozen=True)
class Done:
    result: Any


@dataclass(frozen=True)
class Failed:
    error: BaseException


def run_in_thread(work: Callable[[StageHook], Any]) -> Iterator[StageEvent | Done | Failed]:
    """Run ``work(hook)`` in a thread; yield its stage events as they happen, then ``Done`` or ``Failed``."""
    events: queue.Queue[StageEvent | Done | Failed] = queue.Queue()
    hook = StageHook(events.put)

    def target() -> None:
        try:
            events.put(Done(work(hook)))
        except BaseException as exc:  # handed to the page as an error; the server keeps serving
            events.put(Failed(exc))

    thread = threading.Thread(target=target, name="lrs-vqa-answer", daemon=True)
    thread.start()
    while True:
        item = events.get()
        yield item
        if isinstance(item, Done | Failed):
            thread.join()
            return
