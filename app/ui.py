"""The page: inputs and settings on the left, the streamed answer, pictures, statistics and downloads on the
right. ``build_demo`` only builds; ``app.server`` launches."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from app import viewer as view
from app.config import APP_SCORERS, NO_PRUNER, RunSettings, ServeConfig, app_strategies
from app.examples import EXAMPLES, ensure_examples
from app.inputs import InputError, resolve_input
from app.progress import Done, Failed, StageEvent, run_in_thread
from app.render import (
    answer_markdown,
    colour_map,
    gallery,
    level_label,
    outline_masks,
    overview_boxes,
    record_annotations,
    selected_tiles,
    statistics,
    to_pil,
)
from app.tiles import TileService
from lrs_vqa.answer import StrategyError, answer, get_adapter, pyramid_spec_for
from lrs_vqa.c2f import C2FError
from lrs_vqa.evidence import write_evidence
from lrs_vqa.models.errors import ModelLoadError, UnsupportedModelError
from pruning.errors import PruningError
from pruning.registry import known_pruners
from pyramid.dip import DynamicImagePyramid, PyramidOptions
from pyramid.errors import RasterInputError

log = logging.getLogger("lrs_vqa.app")
READABLE = (
    InputError,
    RasterInputError,
    StrategyError,
    C2FError,
    UnsupportedModelError,
    ModelLoadError,
    PruningError,
)
Outputs = tuple[Any, ...]


def readable(exc: BaseException) -> str:
    if isinstance(exc, READABLE):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory: try a smaller tile cap or token budget"
    log.exception("unexpected failure", exc_info=exc)
    return f"internal error ({type(exc).__name__}): {exc}"


def _trail(stages: list[str]) -> str:
    done = " → ".join(f"✔ {s}" for s in stages[:-1])
    now = f"⏳ **{stages[-1]}**" if stages else ""
    return "**Progress:** " + (f"{done} → {now}" if done else now)


class Asker:
    """The event handler: one question, streamed stage by stage."""

    def __init__(
        self, config: ServeConfig, examples: dict[str, Path], tiles: TileService | None = None
    ) -> None:
        self.config = config
        self.examples = examples
        self.tiles = tiles  # None: no deep-zoom viewer (the page shows its placeholder)
        self._model_lock = threading.Lock()  # the queue runs one job; this also guards direct calls

    def ask(
        self,
        upload: str | None,
        example: str | None,
        server_path: str | None,
        question: str,
        model: str,
        strategy: str,
        scorer: str,
        keep_ratio: float,
        max_tiles_per_level: float,
        budget_tokens: float,
        pruner: str | None = NO_PRUNER,
        budget: str | None = "",
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[Outputs]:
        path: Path | str | None = None  # str: a URL (--allow-remote)
        try:
            path = resolve_input(upload, example, server_path, self.config, self.examples)
            if not (question or "").strip():
                raise InputError("the question is empty")
            if model not in self.config.models:
                raise InputError(f"model {model!r} is not served here")
            settings = RunSettings(
                model=model,
                strategy=strategy,
                scorer=scorer,
                keep_ratio=float(keep_ratio),
                max_tiles_per_level=int(max_tiles_per_level),
                budget_tokens=int(budget_tokens),
                pruner=None if not pruner or pruner == NO_PRUNER else pruner.strip(),
                budget=(budget or "").strip() or None,
            )
            options = settings.ask_options()
            with self._model_lock:
                yield from self._run(path, question, settings, options, progress)
        except gr.Error:
            raise
        except Exception as exc:  # every failure becomes a message in the page
            message = readable(exc)
            if isinstance(path, Path):  # an upload's temporary folder means nothing to the user
                message = message.replace(str(path), path.name)
            raise gr.Error(message, title="Cannot answer") from exc

    def _run(
        self, path: Path | str, question: str, settings: RunSettings, options: Any, progress: gr.Progress
    ) -> Iterator[Outputs]:
        stages = ["loading model"]
        progress(0.0, desc="loading model")
        yield _trail(stages), "", None, [], None, None, None, view.EMPTY
        adapter = get_adapter(settings.model, self.config.device, self.config.dtype)
        popts = PyramidOptions(spec=pyramid_spec_for(adapter))
        with DynamicImagePyramid.open(path, popts) as dip:
            coarse = dip.levels[0]
            fx, fy = coarse.factor_x, coarse.factor_y
            overview = to_pil(dip.level_image(0).pixels)
            n_levels = len(dip.levels)
            stages.append("overview")
            progress(0.05, desc="overview")
            # The viewer opens on the image at once; the token is this page's only way to its tiles.
            token = None
            shown: Any = gr.skip()
            if self.tiles is not None:
                token = self.tiles.register(path, dip.info.width, dip.info.height)
                self.tiles.attach(token, view.base_overlay(token, dip.info.width, dip.info.height), None)
                shown = view.container(token, 1)
            yield _trail(stages), "", (overview, []), [], None, None, None, shown

            out_dir = Path(tempfile.mkdtemp(prefix="lrs-vqa-app-"))
            heatmap = out_dir / "heatmap.png" if settings.strategy == "c2f" else None

            def work(hook: Any) -> Any:
                return answer(
                    path,
                    question,
                    model=adapter,
                    device=self.config.device,
                    dtype=self.config.dtype,
                    options=options,
                    vision_hooks=(hook,),
                    llm_hooks=(hook,),
                    heatmap=heatmap,
                )

            boxes: list[tuple[tuple[int, int, int, int], str]] = []
            record = None
            for event in run_in_thread(work):
                if isinstance(event, Failed):
                    raise event.error
                if isinstance(event, Done):
                    record = event.result
                    break
                assert isinstance(event, StageEvent)
                if event.stage == "answer":
                    stages.append("answer")
                    progress(0.9, desc="answer")
                elif event.level >= 0:
                    label = level_label(event.level)
                    boxes += overview_boxes(event.boxes, label, fx, fy)
                    stages += [label, "scoring"] if settings.strategy == "c2f" else [label]
                    progress(0.1 + 0.8 * (event.level + 1) / n_levels, desc=stages[-1])
                else:
                    continue
                yield (
                    _trail(stages),
                    "",
                    (overview, outline_masks(boxes, *overview.size)),
                    [],
                    None,
                    None,
                    None,
                    gr.skip(),  # the viewer is re-initialised once, with the answer
                )

            assert record is not None
            base = overview
            if heatmap is not None and heatmap.is_file():
                from PIL import Image

                base = Image.open(heatmap).convert("RGB")
            annotations = record_annotations(record, fx, fy)
            tiles = gallery(dip, selected_tiles(record))
            if self.tiles is not None and token is not None:
                has_heatmap = heatmap is not None and heatmap.is_file()
                overlay = view.answer_overlay(token, record, dip, path, has_heatmap)
                self.tiles.attach(token, overlay, heatmap if has_heatmap else None)
                shown = view.container(token, 2)
        evidence = write_evidence(record, out_dir / "evidence.geojson")
        record_path = out_dir / "record.json"
        record_path.write_text(json.dumps(record.to_dict(), indent=1))
        stages.append("done")
        progress(1.0, desc="done")
        yield (
            _trail(stages).replace("⏳", "✔"),
            answer_markdown(record),
            (base, outline_masks(annotations, *base.size)),
            tiles,
            statistics(record),
            str(evidence),
            str(record_path),
            shown,
        )


def _intro(config: ServeConfig) -> str:
    return (
        "# lrs-vqa — ask a gigapixel remote-sensing image\n"
        "Upload a GeoTIFF / PNG / JPEG (or pick a bundled synthetic example), ask a question, and watch the "
        "coarse-to-fine loop zoom in: overview → scoring → level k → answer.\n\n"
        f"**Upload limit: {config.max_upload_mb} MB.** One question runs at a time; waiting requests show "
        "their place in the queue."
    )


def _truth(name: str | None) -> str:
    ex = next((e for e in EXAMPLES if e.name == name), None)
    return f"Ground truth of this example: **{ex.ground_truth}**" if ex is not None else ""


def _example_question(name: str | None) -> tuple[str, str]:
    ex = next((e for e in EXAMPLES if e.name == name), None)
    return (ex.question if ex is not None else gr.skip()), _truth(name)


def build_demo(config: ServeConfig, tiles: TileService | None = None) -> gr.Blocks:
    """The page; ``tiles`` serves the deep-zoom viewer (``app.server`` mounts its routes)."""
    examples = ensure_examples(config.examples_dir)
    asker = Asker(config, examples, tiles)
    first = EXAMPLES[0]
    with gr.Blocks(title="lrs-vqa", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(_intro(config))
        with gr.Row():
            with gr.Column(scale=3):
                upload = gr.File(
                    label=f"Image (GeoTIFF / PNG / JPEG, at most {config.max_upload_mb} MB)",
                    file_types=[".tif", ".tiff", ".png", ".jpg", ".jpeg"],
                    type="filepath",
                    elem_id="upload",
                )
                example = gr.Dropdown(
                    choices=list(examples), value=first.name, label="…or a bundled example", elem_id="example"
                )
                server_path = gr.Textbox(
                    label=(
                        f"…or a file under {config.allow_dir} on the server"
                        if config.allow_dir
                        else "server path"
                    )
                    + (" or a COG / STAC item URL" if config.allow_remote else ""),
                    visible=config.allow_dir is not None or config.allow_remote,
                    elem_id="server-path",
                )
                question = gr.Textbox(label="Question", value=first.question, elem_id="question")
                truth = gr.Markdown(_truth(first.name), elem_id="ground-truth")
                # Picking an example asks its question, and shows the answer the scene knows.
                example.change(_example_question, inputs=example, outputs=[question, truth])
                with gr.Accordion("Settings", open=False):
                    model = gr.Dropdown(
                        choices=list(config.models), value=config.models[0], label="Model", elem_id="model"
                    )
                    defaults = RunSettings(model=config.models[0])
                    strategy = gr.Radio(list(app_strategies()), value=defaults.strategy, label="Strategy")
                    scorer = gr.Radio(list(APP_SCORERS), value=defaults.scorer, label="Scorer (c2f)")
                    keep_ratio = gr.Slider(
                        0.01, 1.0, value=defaults.keep_ratio, step=0.01, label="Keep ratio"
                    )
                    max_tiles = gr.Slider(
                        1, 64, value=defaults.max_tiles_per_level, step=1, label="Tile cap per level"
                    )
                    budget = gr.Number(
                        value=defaults.budget_tokens,
                        precision=0,
                        minimum=1,
                        label="Vision token budget (c2f)",
                    )
                    pruner = gr.Dropdown(
                        choices=[NO_PRUNER, *known_pruners()],
                        value=NO_PRUNER,
                        allow_custom_value=True,  # options and chains: fastv:layer=3, visionzip+fastv
                        label="Token pruner (replaces the c2f final prune)",
                        elem_id="pruner",
                    )
                    pruner_budget = gr.Textbox(
                        label="Pruner budget",
                        placeholder="64 (tokens) · avg:128 · 0.25 (ratio)",
                        elem_id="budget",
                    )
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column(scale=7):
                status = gr.Markdown(elem_id="status")
                answer_md = gr.Markdown(elem_id="answer")
                overview = gr.AnnotatedImage(
                    label="Overview: selected tiles per level + token scores",
                    color_map=colour_map(),
                    elem_id="overview",
                )
                deep_zoom = gr.HTML(
                    view.EMPTY,
                    label="Deep zoom",
                    head=view.HEAD,
                    js_on_load=view.ON_LOAD,
                    elem_id="viewer",
                )
                tiles = gr.Gallery(label="Selected tiles", columns=6, height=260, elem_id="tiles")
                stats = gr.JSON(label="Statistics", elem_id="stats")
                with gr.Row():
                    evidence = gr.File(label="GeoJSON evidence", elem_id="evidence")
                    record = gr.File(label="JSON record", elem_id="record")
        ask.click(
            asker.ask,
            inputs=[
                upload,
                example,
                server_path,
                question,
                model,
                strategy,
                scorer,
                keep_ratio,
                max_tiles,
                budget,
                pruner,
                pruner_budget,
            ],
            outputs=[status, answer_md, overview, tiles, stats, evidence, record, deep_zoom],
            api_name="ask",
            concurrency_limit=1,
        )
    return demo
