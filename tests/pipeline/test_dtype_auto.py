"""``--dtype auto``: one resolver decides bf16 or fp32 from the device and the CPU's flags; explicit dtypes
pass through unchanged; the answer record names the dtype the weights held (never ``auto``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lrs_vqa.answer import AskOptions, answer, get_adapter
from lrs_vqa.cli import main
from lrs_vqa.models.dtypes import CPU_FLAGS_ENV, host_cpu_flags, resolve_dtype
from lrs_vqa.models.errors import UnsupportedModelError
from lrs_vqa.models.registry import load_adapter
from pyramid.synth import synthesize_scene

ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})  # bf16 dot products in hardware
SAPPHIRE_RAPIDS = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
SKYLAKE = frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni"})  # AVX-512, but no bf16 instruction
HASWELL = frozenset({"sse4_2", "avx2", "fma"})


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(ZEN4, "bfloat16"), (SAPPHIRE_RAPIDS, "bfloat16"), (frozenset({"amx_bf16"}), "bfloat16"),
     (SKYLAKE, "float32"), (HASWELL, "float32"), (frozenset(), "float32")],
)  # fmt: skip
def test_auto_on_cpu_follows_the_bf16_flags(flags: frozenset[str], expected: str) -> None:
    assert resolve_dtype("auto", "cpu", cpu_flags=flags) == expected


@pytest.mark.parametrize(
    ("device", "cuda_bf16", "expected"),
    [("cuda", True, "bfloat16"), ("cuda:1", True, "bfloat16"), ("cuda", False, "float32"),
     ("mps", None, "float32")],
)  # fmt: skip
def test_auto_on_other_devices(device: str, cuda_bf16: bool | None, expected: str) -> None:
    # The CPU's flags do not matter off the CPU.
    assert resolve_dtype("auto", device, cpu_flags=SAPPHIRE_RAPIDS, cuda_bf16=cuda_bf16) == expected


def test_auto_on_a_cuda_device_this_process_cannot_see_is_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_dtype("auto", "cuda:0") == "float32"


def test_auto_on_cuda_reads_the_compute_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, expected in (((7, 5), "float32"), ((8, 0), "bfloat16"), ((9, 0), "bfloat16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _d, c=capability: c)
        assert resolve_dtype("auto", "cuda") == expected


@pytest.mark.parametrize("name", ["float32", "fp32", "bfloat16", "bf16", "float16"])
def test_explicit_dtypes_pass_through_unchanged(name: str) -> None:
    for flags in (SAPPHIRE_RAPIDS, HASWELL):
        assert resolve_dtype(name, "cpu", cpu_flags=flags) == name
    assert resolve_dtype(name, "cuda", cuda_bf16=True) == name


def test_a_bad_dtype_is_one_clear_error() -> None:
    with pytest.raises(UnsupportedModelError, match=r"--dtype must be one of \['auto', .*got 'fp8'"):
        resolve_dtype("fp8", "cpu")


def test_host_flags_come_from_cpuinfo_unless_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    monkeypatch.delenv(CPU_FLAGS_ENV, raising=False)
    assert host_cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512f", "avx512_bf16"}  # the first CPU's line
    assert host_cpu_flags(tmp_path / "absent") == frozenset()  # no /proc (macOS): auto is fp32
    monkeypatch.setenv(CPU_FLAGS_ENV, "amx_bf16 avx512f")
    assert host_cpu_flags(cpuinfo) == {"amx_bf16", "avx512f"}
    assert resolve_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setenv(CPU_FLAGS_ENV, "")
    assert resolve_dtype("auto", "cpu") == "float32"


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> str:
    return tiny_checkpoint("llava", 5)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scene") / "scene.tif"
    synthesize_scene(out, (700, 500), seed=2)
    return out


@pytest.mark.parametrize(("flags", "expected"), [("avx512f avx512_bf16", "bfloat16"), ("avx2", "float32")])
def test_the_record_names_the_resolved_dtype(
    flags: str, expected: str, tiny: str, scene: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, flags)
    options = AskOptions(strategy="global", max_new_tokens=2)
    record = answer(scene, "what is there?", model=tiny, options=options)  # dtype: the default, auto
    assert record.settings["dtype"] == expected
    assert get_adapter(tiny, "cpu", "auto").dtype == getattr(torch, expected)
    # An explicit dtype is what loads, whatever the flags say.
    explicit = answer(scene, "what is there?", model=tiny, dtype="float32", options=options)
    assert explicit.settings["dtype"] == "float32"


def test_a_loaded_model_is_recorded_as_it_is(tiny: str, scene: Path) -> None:
    """A model passed in already loaded: the record says what its weights hold, not the dtype argument."""
    adapter = load_adapter(tiny, dtype="bfloat16")
    record = answer(scene, "q?", model=adapter, dtype="float32", options=AskOptions(strategy="global"))
    assert record.settings["dtype"] == "bfloat16"


def test_ask_cli_defaults_to_auto(tiny: str, scene: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv(CPU_FLAGS_ENV, "amx_bf16")
    args = [
        "ask",
        str(scene),
        "q?",
        "--model",
        tiny,
        "--strategy",
        "global",
        "--json",
        "--max-new-tokens",
        "2",
    ]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["dtype"] == "bfloat16"
    assert main([*args, "--dtype", "float32"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["dtype"] == "float32"


def test_batch_settings_hold_the_resolved_dtype(
    tiny: str, scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolved where the run starts: the resume identity is concrete, so a resumed run cannot mix dtypes."""
    from lrs_vqa.batch import BatchConfig, run_batch

    images = tmp_path / "images"
    images.mkdir()
    (images / "a.tif").symlink_to(scene)
    questions = tmp_path / "q.txt"
    questions.write_text("what is there?\n")
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx512_bf16")
    options = AskOptions(strategy="global", max_new_tokens=2)
    cfg = BatchConfig(questions, tmp_path / "out", tiny, images=images, options=options)
    assert cfg.dtype == "auto"
    run_batch(cfg)
    assert json.loads((tmp_path / "out" / "batch.json").read_text())["dtype"] == "bfloat16"
