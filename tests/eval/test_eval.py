"""``lrs-vqa eval`` / ``merge`` end to end on a synthetic benchmark laid out like LRS-VQA (``LRS_VQA/image/``,
FAIR on GeoTIFFs, GLH-Bridge and STAR on PNGs) with a tiny random model: rows, results, one pyramid per image,
kill and resume, sharding and merge, path traversal, malformed rows, failed answers, MME-RealWorld."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lrs_vqa.answer import AskOptions, answer
from lrs_vqa.cli import main
from lrs_vqa.eval_errors import PathEscapeError
from lrs_vqa.evaluate import EvalConfig, run_eval
from lrs_vqa.questions import chunk, resolve_image
from lrs_vqa.synthetic_benchmark import write_synthetic_benchmark
from lrs_vqa.wordnet import WordNetMissingError, load_wordnet

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES, PER_IMAGE = 3, 3  # one image per sub-dataset
VOLATILE = ("seconds", "peak_memory_mb")  # stats that differ between two runs of the same question


@pytest.fixture(scope="module", autouse=True)
def _wordnet_or_skip() -> None:
    try:
        load_wordnet()
    except WordNetMissingError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"WordNet must be installed in CI: {exc}")
        pytest.skip(f"no WordNet here (eval scores its answers): {exc}")


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    questions = write_synthetic_benchmark(
        root / "data", images=N_IMAGES, questions_per_image=PER_IMAGE, size=(320, 240), seed=4
    )
    model = tiny_checkpoint("llava_onevision", 3)
    return {"root": root / "data", "questions": questions, "model": Path(model), "cache": root / "cache"}


@pytest.fixture(autouse=True)
def _cache(bench: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LRS_VQA_CACHE_DIR", str(bench["cache"]))


def eval_args(bench: dict[str, Path], out: Path, *extra: str, questions: Path | None = None) -> list[str]:
    return [
        "eval",
        "--questions",
        str(questions or bench["questions"]),
        "--image-root",
        str(bench["root"]),
        "--output-dir",
        str(out),
        "--model",
        str(bench["model"]),
        "--max-new-tokens",
        "3",
        "--no-progress",
        *extra,
    ]


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stable(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its timing and memory figures."""
    out = dict(row)
    if isinstance(out.get("stats"), dict):
        out["stats"] = {k: v for k, v in out["stats"].items() if k not in VOLATILE}
    return out


@pytest.fixture(scope="module")
def single(bench: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One unsharded run over the whole synthetic benchmark: the reference for the other tests."""
    out = tmp_path_factory.mktemp("single")
    os.environ["LRS_VQA_CACHE_DIR"] = str(bench["cache"])
    cfg = EvalConfig(
        questions=bench["questions"],
        image_root=bench["root"],
        output_dir=out,
        model=str(bench["model"]),
        options=AskOptions(max_new_tokens=3),
    )
    result = run_eval(cfg)
    return {"out": out, "result": result, "rows": rows_of(out / "answers.jsonl")}


def test_end_to_end_rows_and_results(single: dict[str, Any], bench: dict[str, Path]) -> None:
    result, rows = single["result"], single["rows"]
    questions = rows_of(bench["questions"])
    n = N_IMAGES * PER_IMAGE
    assert len(rows) == n == result.answered_now == result.selected
    assert sorted(r["question_id"] for r in rows) == sorted(q["question_id"] for q in questions)
    # Questions about one image are asked together; one pyramid per image.
    assert result.images_opened == N_IMAGES
    by_id = {q["question_id"]: q for q in questions}
    for r in rows:
        q = by_id[r["question_id"]]
        # The official scorer's fields (and ``id``, which its grouping reads) ...
        assert r["id"] == r["question_id"] and r["prompt"] == q["text"]
        assert all(r[k] == q[k] for k in ("ground_truth", "category", "image"))
        assert isinstance(r["text"], str) and r["error"] is None
        assert r["model_id"] == str(bench["model"].resolve())
        # ... plus our statistics and the evidence boxes.
        s = r["stats"]
        assert s["tokens_into_llm"] == s["vision_tokens_into_llm"] + s["text_tokens"]
        assert s["tflops_total"] > 0 and s["tiles_read"] >= 1 and s["seconds"]["total"] > 0
        assert 1 <= s["generated_tokens"] <= 3
        assert r["evidence"][0]["role"] == "thumbnail" and r["evidence"][0]["pixel_box"] == [0, 0, 320, 240]
        assert all(len(e["pixel_box"]) == 4 for e in r["evidence"])
    results = json.loads(result.results_path.read_text())
    assert results["counts"]["selected"] == n and results["counts"]["rows_in_answers_file"] == n
    assert results["counts"]["images_opened_now"] == N_IMAGES
    settings = results["settings"]
    assert settings["options"]["strategy"] == "c2f" and settings["options"]["max_new_tokens"] == 3
    assert settings["questions_sha256"] and settings["num_chunks"] == 1
    assert {"python", "torch", "transformers", "nltk", "lrs-vqa"} <= set(results["versions"])
    scores = results["scores"]
    assert scores["rows_scored"] == n and [s["name"] for s in scores["official"]["subsets"]] == [
        "FAIR",
        "GLH-Bridge",
        "STAR",
    ]
    assert scores["wordnet"]["version"] == "3.0"
    assert results["throughput"]["rows_with_stats"] == n


def test_grouped_by_image_in_first_appearance_order(single: dict[str, Any], bench: dict[str, Path]) -> None:
    rows = single["rows"]
    order = [r["image"] for r in rows]
    firsts = list(dict.fromkeys(q["image"] for q in rows_of(bench["questions"])))
    assert list(dict.fromkeys(order)) == firsts
    assert all(order.count(img) == PER_IMAGE for img in firsts)
    assert sum(1 for a, b in itertools.pairwise(order) if a != b) == N_IMAGES - 1  # contiguous


def test_shared_pyramid_answers_equal_plain_answer(single: dict[str, Any], bench: dict[str, Path]) -> None:
    """Reusing one open pyramid per image changes nothing: ``answer()`` on its own gives the same rows."""
    for r in single["rows"][:2]:
        record = answer(
            bench["root"] / r["image"],
            r["prompt"],
            model=str(bench["model"]),
            options=AskOptions(max_new_tokens=3),
        )
        assert record.answer == r["text"]
        assert record.stats.tiles_read == r["stats"]["tiles_read"]
        assert record.stats.vision_tokens_into_llm == r["stats"]["vision_tokens_into_llm"]
        assert [t.pixel_box for t in record.tiles] == [e["pixel_box"] for e in r["evidence"]]


def test_official_scorer_reads_our_rows(single: dict[str, Any]) -> None:
    """The official script's own loop (by ``id`` prefix, lower-cased equality first) runs on our file."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in single["rows"]:
        groups.setdefault(item["id"].split("_")[0], []).append(item)
    assert sorted(groups) == ["FAIR", "GLH-Bridge", "STAR"]
    assert all({"ground_truth", "text", "category"} <= set(i) for g in groups.values() for i in g)


def test_kill_and_resume_loses_and_repeats_nothing(
    single: dict[str, Any], bench: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    answers = out / "answers.jsonl"
    cmd = [sys.executable, "-m", "lrs_vqa", *eval_args(bench, out, "--no-score")]
    env = {**os.environ, "LRS_VQA_CACHE_DIR": str(bench["cache"])}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if answers.exists() and answers.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, (
            f"eval ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    before = rows_of(answers)
    assert 2 <= len(before) < N_IMAGES * PER_IMAGE
    with open(answers, "ab") as fh:  # as if the kill had landed in the middle of a write
        fh.write(b'{"question_id": "STAR_2", "text": "hal')
    assert main(eval_args(bench, out)) == 2  # not without --resume
    assert main(eval_args(bench, out, "--resume")) == 0
    after = rows_of(answers)
    ids = [r["question_id"] for r in after]
    assert len(ids) == len(set(ids)) == N_IMAGES * PER_IMAGE
    assert [r["question_id"] for r in after[: len(before)]] == [r["question_id"] for r in before]
    reference = {r["question_id"]: stable(r) for r in single["rows"]}
    assert {r["question_id"]: stable(r) for r in after} == reference
    results = json.loads((out / "results.json").read_text())
    assert results["counts"]["answered_before"] == len(before)
    assert results["counts"]["answered_now"] == N_IMAGES * PER_IMAGE - len(before)
    # A second resume has nothing left to do and adds nothing.
    assert main(eval_args(bench, out, "--resume")) == 0
    assert rows_of(answers) == after


def test_resume_with_other_settings_is_refused(
    single: dict[str, Any], bench: dict[str, Path], capsys
) -> None:
    out = single["out"]
    rows = (out / "answers.jsonl").read_bytes()
    assert main(eval_args(bench, out, "--resume", "--strategy", "global")) == 2
    assert "options differ" in capsys.readouterr().err
    assert (out / "answers.jsonl").read_bytes() == rows


def test_sharding_and_merge_equal_a_single_run(
    single: dict[str, Any], bench: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "shards"
    for k in range(2):
        assert main(eval_args(bench, out, "--num-chunks", "2", "--chunk-idx", str(k))) == 0
    shard0, shard1 = rows_of(out / "answers-0-of-2.jsonl"), rows_of(out / "answers-1-of-2.jsonl")
    lines = sorted(r["line"] for r in single["rows"])
    # The official split: ceil(n / 2) consecutive questions per shard.
    assert sorted(r["line"] for r in shard0) == lines[:5] and sorted(r["line"] for r in shard1) == lines[5:]
    assert (
        main(["merge", str(out / "answers-1-of-2.jsonl"), "--output-dir", str(out)]) == 2
    )  # shard 0 missing
    assert main(["merge", str(out), "--output-dir", str(out)]) == 0
    merged = rows_of(out / "answers.jsonl")
    assert [r["line"] for r in merged] == lines  # question-file order
    assert [stable(r) for r in merged] == sorted((stable(r) for r in single["rows"]), key=lambda r: r["line"])
    results = json.loads((out / "results.json").read_text())
    reference = json.loads(single["result"].results_path.read_text())["scores"]
    for key in ("official", "rows_scored", "bad_rows"):
        assert results["scores"][key] == reference[key]
    assert results["counts"] == {"shards": 2, "num_chunks": 2, "rows": 9, "missing": 0}
    assert main(["merge", str(out), "--output-dir", str(out)]) == 2  # would overwrite


def test_chunking_is_the_official_split() -> None:
    items = tuple(range(10))
    assert [chunk(items, 3, k) for k in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # type: ignore[arg-type]
    assert [len(chunk(items, 4, k)) for k in range(4)] == [3, 3, 3, 1]  # type: ignore[arg-type]


def test_limit_and_offset(single: dict[str, Any], bench: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "limited"
    assert main(eval_args(bench, out, "--offset", "2", "--limit", "3", "--strategy", "global")) == 0
    rows = rows_of(out / "answers.jsonl")
    assert sorted(r["line"] for r in rows) == [3, 4, 5]


def test_path_traversal_refused(bench: dict[str, Path], tmp_path: Path, capsys) -> None:
    root = bench["root"]
    with pytest.raises(PathEscapeError):
        resolve_image(root, "../secret.png")
    with pytest.raises(PathEscapeError):
        resolve_image(root, "LRS_VQA/image/../../../secret.png")
    with pytest.raises(PathEscapeError):
        resolve_image(root, "/etc/passwd")
    assert resolve_image(root, "LRS_VQA/image/../image/1000.tif") == root / "LRS_VQA/image/../image/1000.tif"
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"not for you")
    good = rows_of(bench["questions"])[0]
    rows = [
        good,
        {**good, "question_id": "STAR_90", "image": os.path.relpath(outside, root)},
        {**good, "question_id": "STAR_91", "image": str(outside)},
    ]
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main(eval_args(bench, out, questions=q)) == 2
    err = capsys.readouterr().err
    assert "line 2 (STAR_90): image path" in err and "escapes --image-root" in err
    assert "line 3 (STAR_91): image path" in err and "is absolute" in err
    assert not (out / "answers.jsonl").exists()
    assert main(eval_args(bench, out, "--skip-bad-rows", "--strategy", "global", questions=q)) == 0
    assert [r["question_id"] for r in rows_of(out / "answers.jsonl")] == [good["question_id"]]
    results = json.loads((out / "results.json").read_text())
    assert results["counts"]["bad_question_rows"] == 2 and len(results["bad_question_rows"]) == 2


def test_malformed_question_rows_reported(bench: dict[str, Path], tmp_path: Path, capsys) -> None:
    good = rows_of(bench["questions"])
    q = tmp_path / "q.jsonl"
    q.write_text(
        "\n".join(
            [
                json.dumps(good[0]),
                "{broken",
                json.dumps({k: v for k, v in good[1].items() if k != "ground_truth"}),
                json.dumps(good[0]),  # repeated id
                json.dumps({**good[2], "image": "LRS_VQA/image/none.png"}),
                json.dumps("a string"),
            ]
        )
        + "\n"
    )
    assert main(eval_args(bench, tmp_path / "out", questions=q)) == 2
    err = capsys.readouterr().err
    assert "5 malformed question rows:" in err
    for expected in (
        "line 2: invalid JSON",
        "line 3 (FAIR_2): missing or empty ground_truth",
        "line 4 (FAIR_1): duplicate question id (first at line 1)",
        "line 5 (FAIR_3): image not found",
        "line 6: not a JSON object",
    ):
        assert expected in err
    assert "--skip-bad-rows" in err.splitlines()[-1]


def test_failed_answer_is_a_row_and_the_run_goes_on(bench: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "LRS_VQA" / "image").mkdir(parents=True)
    (root / "LRS_VQA" / "image" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    good = rows_of(bench["questions"])[0]
    (root / "LRS_VQA" / "image" / "1000.tif").symlink_to(bench["root"] / good["image"])
    rows = [
        {**good, "question_id": "FAIR_1", "image": "LRS_VQA/image/broken.png"},
        good | {"question_id": "FAIR_2"},
    ]
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    args = eval_args(bench, out, "--strategy", "global", questions=q)
    args[args.index("--image-root") + 1] = str(root)
    assert main(args) == 0
    answers = {r["question_id"]: r for r in rows_of(out / "answers.jsonl")}
    assert (
        answers["FAIR_1"]["error"] and answers["FAIR_1"]["text"] == "" and answers["FAIR_1"]["stats"] is None
    )
    assert answers["FAIR_2"]["error"] is None
    scores = json.loads((out / "results.json").read_text())["scores"]
    assert scores["official"]["overall"]["total"] == 2
    assert any("answer failed" in b["reason"] for b in scores["bad_rows"])


def test_mme_realworld_questions(bench: dict[str, Path], tmp_path: Path) -> None:
    images = [q["image"] for q in rows_of(bench["questions"])][::PER_IMAGE][:2]
    choices = ["(A) red", "(B) blue", "(C) white", "(D) black", "(E) The image does not feature the color."]
    records = [
        {
            "Question_id": f"perception/remote_sensing/color/{k}",
            "Image": image,
            "Text": "What is the color of the largest object?",
            "Answer choices": choices,
            "Ground truth": "B",
            "Task": "Perception",
            "Subtask": "Remote Sensing",
            "Category": "color",
        }
        for k, image in enumerate(images)
    ]
    q = tmp_path / "MME_RealWorld_RS.json"
    q.write_text(json.dumps(records))
    out = tmp_path / "mme"
    assert main(eval_args(bench, out, "--strategy", "global", questions=q)) == 0
    rows = rows_of(out / "answers.jsonl")
    assert [r["Question_id"] for r in rows] == [r["Question_id"] for r in records]
    assert all(isinstance(r["Output"], str) and r["Answer choices"] == choices and r["stats"] for r in rows)
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark"] == "mme-realworld"
    assert results["scores"]["benchmark"] == "mme-realworld" and results["scores"]["rows_scored"] == 2


# ------------------------------------------------------------------------------------------------- batch


def batch_args(bench: dict[str, Path], questions: Path, out: Path, *extra: str) -> list[str]:
    return [
        "batch",
        str(questions),
        "--output-dir",
        str(out),
        "--model",
        str(bench["model"]),
        "--strategy",
        "global",
        "--max-new-tokens",
        "3",
        "--no-progress",
        *extra,
    ]


def test_batch_list_csv_evidence_summary_and_resume(bench: dict[str, Path], tmp_path: Path) -> None:
    images = sorted({q["image"] for q in rows_of(bench["questions"])})
    tif = next(i for i in images if i.endswith(".tif"))
    png = next(i for i in images if i.endswith(".png"))
    q = tmp_path / "questions.csv"
    q.write_text(
        "image,question,id\n"
        f"{tif},How many buildings are there?,a1\n"
        f"{png},What colour is the roof?,\n"  # no id: named after its line
        f"{tif},Is this area urban?,a3\n"
    )
    out = tmp_path / "batch"
    args = batch_args(bench, q, out, "--image-root", str(bench["root"]), "--json")
    assert main(args) == 0
    rows = rows_of(out / "answers.jsonl")
    assert [r["id"] for r in rows] == ["a1", "a3", "line3"]  # grouped by image, first appearance first
    assert all(
        r["error"] is None and isinstance(r["answer"], str) and r["stats"]["tiles_read"] >= 1 for r in rows
    )
    for r in rows:
        geo = json.loads((out / r["evidence_file"]).read_text())
        assert geo["type"] == "FeatureCollection" and geo["answer"] == r["answer"]
        assert len(geo["features"]) == len(r["tiles"]) >= 1
        systems = {f["properties"]["coordinate_system"] for f in geo["features"]}
        assert systems == ({"wgs84"} if r["image"] == tif else {"pixel"})
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == 3 and summary["answered_now"] == 3 and summary["errors"] == 0
    assert summary["tiles_read"] == sum(r["stats"]["tiles_read"] for r in rows)
    assert summary["total_tflops"] == pytest.approx(sum(r["stats"]["tflops_total"] for r in rows))
    assert main(args) == 2  # answers exist: not without --resume
    assert main([*args, "--resume"]) == 0
    assert rows_of(out / "answers.jsonl") == rows  # nothing asked twice
    assert json.loads((out / "summary.json").read_text())["answered_before"] == 3


def test_batch_folder_of_images_with_questions_file(bench: dict[str, Path], tmp_path: Path) -> None:
    q = tmp_path / "questions.txt"
    q.write_text("# asked about every image\nIs this an urban or a rural area?\nHow many ships are there?\n")
    out = tmp_path / "folder"
    images = bench["root"] / "LRS_VQA" / "image"
    assert main(batch_args(bench, q, out, "--images", str(images))) == 0
    rows = rows_of(out / "answers.jsonl")
    names = sorted(p.name for p in images.iterdir() if not p.name.startswith("."))
    assert [r["id"] for r in rows] == [f"{n}::q{k}" for n in names for k in (1, 2)]
    assert len(list((out / "evidence").glob("*.geojson"))) == len(rows) == 2 * N_IMAGES


def test_batch_bad_rows_listed(bench: dict[str, Path], tmp_path: Path, capsys) -> None:
    image = rows_of(bench["questions"])[0]["image"]
    q = tmp_path / "q.jsonl"
    q.write_text(
        "\n".join(
            [
                json.dumps({"image": image, "question": "What is this?", "id": "x"}),
                json.dumps({"image": image, "question": ""}),
                json.dumps({"image": "LRS_VQA/image/none.png", "question": "Why?"}),
                json.dumps({"image": image, "question": "Again?", "id": "x"}),
                "[oops",
            ]
        )
        + "\n"
    )
    out = tmp_path / "out"
    args = batch_args(bench, q, out, "--image-root", str(bench["root"]))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "4 malformed row(s)" in err and "--skip-bad-rows" in err
    assert main([*args, "--skip-bad-rows"]) == 0
    assert [r["id"] for r in rows_of(out / "answers.jsonl")] == ["x"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bad_rows"] == [
        "line 2 (line2): missing or empty question",
        "line 3 (line3): image not found: " + str(bench["root"] / "LRS_VQA/image/none.png"),
        "line 4 (x): duplicate id (first at line 1)",
        "line 5: invalid JSON (Expecting value)",
    ]


def test_eval_passes_the_pruner_and_its_budget(bench: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    args = eval_args(bench, out, "--pruner", "fastv", "--budget", "8", "--limit", "2", "--no-score")
    assert main(args) == 0
    rows = rows_of(out / "answers.jsonl")
    assert len(rows) == 2 and all(r["stats"]["final_vision_tokens"] == 8 for r in rows)
