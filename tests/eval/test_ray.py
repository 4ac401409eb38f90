"""``eval --ray`` / ``batch --ray`` on a local Ray started by the test (2 CPUs, 2 workers) with the tiny
random model: the same rows as a local run, a killed worker and a unit that keeps failing, a killed driver
resumed (Ray then local, local then Ray), and the one-line error without Ray installed."""

# ruff: noqa: F811  (test_eval's fixtures, imported below, are the parameters of these tests)

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from lrs_vqa.answer import AskOptions
from lrs_vqa.cli import main
from lrs_vqa.cli.ray_options import bare_ray_to_auto
from lrs_vqa.distributed import RayOptions, RayRunError, parse_address
from lrs_vqa.evaluate import EvalConfig, run_eval
from tests.eval.test_eval import (  # noqa: F401  (bench, single and the autouse fixtures are fixtures here too)
    N_IMAGES,
    PER_IMAGE,
    ROOT,
    _cache,
    _wordnet_or_skip,
    batch_args,
    bench,
    eval_args,
    rows_of,
    single,
    stable,
)

N = N_IMAGES * PER_IMAGE


@pytest.fixture(scope="module")
def ray_session(bench: dict[str, Path]) -> Iterator[Any]:
    """One local Ray for the whole module (starting one takes seconds); workers inherit this environment."""
    ray = pytest.importorskip("ray")
    env = pytest.MonkeyPatch()
    env.setenv("LRS_VQA_CACHE_DIR", str(bench["cache"]))
    env.setenv("OMP_NUM_THREADS", "1")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        env.undo()


def rounded(value: Any) -> Any:
    """Floats to 5 significant digits: a worker's torch may use another thread count than this process."""
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def by_id(rows: list[dict[str, Any]], key: str = "question_id") -> dict[str, dict[str, Any]]:
    """Rows by id, without timings; answers and every other field as written."""
    return {r[key]: rounded(stable(r)) for r in rows}


def assert_units_contiguous(rows: list[dict[str, Any]]) -> None:
    """Every question of one image is answered by one worker: its rows arrive together."""
    order = [r["image"] for r in rows]
    assert sum(1 for a, b in itertools.pairwise(order) if a != b) == len(set(order)) - 1


@pytest.mark.slow
def test_ray_eval_writes_the_rows_of_a_local_run(
    single: dict[str, Any], bench: dict[str, Path], ray_session: Any, tmp_path: Path
) -> None:
    out = tmp_path / "ray"
    assert main(eval_args(bench, out, "--ray", "--workers", "2")) == 0
    rows = rows_of(out / "answers.jsonl")
    assert len(rows) == N and by_id(rows) == by_id(single["rows"])
    assert_units_contiguous(rows)
    results = json.loads((out / "results.json").read_text())
    local = json.loads(single["result"].results_path.read_text())
    assert results["scores"]["official"] == local["scores"]["official"]
    assert results["counts"]["answered_now"] == N and results["counts"]["images_opened_now"] == N_IMAGES
    ray = results["ray"]
    assert ray["workers"] == 2 and ray["units"] == N_IMAGES
    assert ray["units_failed"] == ray["units_retried"] == ray["worker_failures"] == 0
    # The same settings file as a local run: a local --resume accepts it (and has nothing to do).
    assert main(eval_args(bench, out, "--resume")) == 0
    assert rows_of(out / "answers.jsonl") == rows


def _fault(marker: str, poisoned_image: str) -> Callable[[Sequence[Any]], None]:
    """A worker hook: the first unit any worker starts kills that worker; the poisoned image always raises."""

    def hook(unit: Sequence[Any]) -> None:
        if unit[0].image == poisoned_image:
            raise RuntimeError(f"poisoned unit {poisoned_image}")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)  # as a segfault or an OOM kill would: no exception, no cleanup

    return hook


@pytest.mark.slow
def test_killed_worker_and_failing_unit(
    single: dict[str, Any], bench: dict[str, Path], ray_session: Any, tmp_path: Path
) -> None:
    reference = by_id(single["rows"])
    poisoned = single["rows"][-1]["image"]
    out = tmp_path / "faults"
    opts = RayOptions(workers=2, unit_attempts=2, before_unit=_fault(str(tmp_path / "killed"), poisoned))
    cfg = EvalConfig(
        questions=bench["questions"],
        image_root=bench["root"],
        output_dir=out,
        model=str(bench["model"]),
        options=AskOptions(max_new_tokens=3),
        ray=opts,
    )
    result = run_eval(cfg)
    rows = rows_of(out / "answers.jsonl")
    ids = [r["question_id"] for r in rows]
    assert (tmp_path / "killed").exists()  # a worker did die mid-run
    assert len(ids) == len(set(ids)) == N  # every row once
    failed = {r["question_id"]: r for r in rows if r["error"]}
    assert {r["image"] for r in failed.values()} == {poisoned} and len(failed) == PER_IMAGE
    assert all("poisoned unit" in r["error"] and r["text"] == "" and not r["stats"] for r in failed.values())
    assert {k: v for k, v in by_id(rows).items() if k not in failed} == {
        k: v for k, v in reference.items() if k not in failed
    }
    ray = result.results["ray"]
    assert ray["worker_failures"] == 1 and ray["units_failed"] == 1
    assert ray["units_retried"] == 2  # the killed worker's unit, and the poisoned one's first try
    assert result.answer_errors == PER_IMAGE


@pytest.mark.slow
def test_driver_killed_then_resumed_across_ray_and_local(
    single: dict[str, Any], bench: dict[str, Path], ray_session: Any, tmp_path: Path
) -> None:
    reference = by_id(single["rows"])
    address = ray_session.get_runtime_context().gcs_address
    # Ray, then local: a driver joining this cluster is killed after its first unit.
    out = tmp_path / "killed"
    answers = out / "answers.jsonl"
    cmd = [sys.executable, "-m", "lrs_vqa", *eval_args(bench, out, "--no-score", "--ray", address)]
    log = open(tmp_path / "driver.log", "wb")  # noqa: SIM115  (a file, not a pipe: never fills up and blocks)
    proc = subprocess.Popen([*cmd, "--workers", "1"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if answers.exists() and answers.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.02)
        output = (tmp_path / "driver.log").read_text(errors="replace")[-800:]
        assert proc.poll() is None, f"eval ended before it was killed: {output}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    before = rows_of(answers)
    assert 1 <= len(before) < N
    assert main(eval_args(bench, out, "--resume")) == 0
    after = rows_of(answers)
    assert after[: len(before)] == before and len(after) == N and by_id(after) == reference
    # Local, then Ray: a local run stopped after 4 questions, continued on Ray.
    out = tmp_path / "local-first"
    assert main(eval_args(bench, out, "--limit", "4", "--no-score")) == 0
    first = rows_of(out / "answers.jsonl")
    assert main(eval_args(bench, out, "--resume", "--ray", "--workers", "2")) == 0
    after = rows_of(out / "answers.jsonl")
    assert after[:4] == first and len(after) == N and by_id(after) == reference
    results = json.loads((out / "results.json").read_text())
    assert results["counts"]["answered_before"] == 4 and results["counts"]["answered_now"] == N - 4


@pytest.mark.slow
def test_ray_batch_writes_the_rows_and_evidence_of_a_local_run(
    bench: dict[str, Path], ray_session: Any, tmp_path: Path
) -> None:
    q = tmp_path / "questions.txt"
    q.write_text("Is this an urban or a rural area?\nHow many ships are there?\n")
    images = bench["root"] / "LRS_VQA" / "image"
    runs = {}
    for name, extra in (("local", ()), ("ray", ("--ray", "auto", "--workers", "2"))):
        out = tmp_path / name
        assert main(batch_args(bench, q, out, "--images", str(images), *extra)) == 0
        rows = rows_of(out / "answers.jsonl")
        evidence = {r["id"]: rounded(json.loads((out / r["evidence_file"]).read_text())) for r in rows}
        runs[name] = (by_id(rows, "id"), evidence)
    assert runs["ray"] == runs["local"] and len(runs["ray"][0]) == 2 * N_IMAGES
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["answered_now"] == 2 * N_IMAGES and summary["ray"]["workers"] == 2


@pytest.mark.parametrize("command", ["eval", "batch"])
def test_ray_missing_is_one_line(
    command: str, bench: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    out = tmp_path / "out"
    q = tmp_path / "q.txt"
    q.write_text("What is this?\n")
    args = (
        eval_args(bench, out, "--ray")
        if command == "eval"
        else batch_args(bench, q, out, "--images", str(bench["root"] / "LRS_VQA" / "image"), "--ray")
    )
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "lrs-vqa[ray]"' in err
    assert not out.exists()  # refused before anything was written


def test_ray_option_values() -> None:
    assert bare_ray_to_auto(["eval", "--ray"]) == ["eval", "--ray", "auto"]
    assert bare_ray_to_auto(["--ray", "--workers", "2"]) == ["--ray", "auto", "--workers", "2"]
    assert bare_ray_to_auto(["eval", "--ray", "10.0.0.1:6379"]) == ["eval", "--ray", "10.0.0.1:6379"]
    assert parse_address("auto") is None and parse_address(None) is None
    assert parse_address("10.0.0.1:6379") == "10.0.0.1:6379"
    assert parse_address("ray://head:10001") == "ray://head:10001"
    with pytest.raises(RayRunError, match="cluster address"):
        parse_address("questions.csv")
