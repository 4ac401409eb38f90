"""The official LRS-VQA scoring rule (golden cases, equivalence with the published path-similarity loop),
OA/AA per sub-dataset on a hand-computed file, bad-row accounting, the real question file scored against
itself, and MME-RealWorld option-letter scoring."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest

from lrs_vqa.benchmarks import score_file
from lrs_vqa.cli import main
from lrs_vqa.mme import extract_letter, mme_prompt, score_mme
from lrs_vqa.rows import Row, read_rows
from lrs_vqa.scoring import SynonymRule, normalize, score_lrs
from lrs_vqa.wordnet import WordNetMissingError, load_wordnet

REAL_QUESTIONS = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "lrs_vqa" / "LRS_VQA_merged.jsonl"
)


@pytest.fixture(scope="module")
def wordnet() -> Any:
    try:
        return load_wordnet()[0]
    except WordNetMissingError as exc:
        if os.environ.get("CI"):  # CI installs wordnet-base (scripts/setup.sh): missing there is a failure
            pytest.fail(f"WordNet must be installed in CI: {exc}")
        pytest.skip(f"no WordNet here: {exc}")


def published_rule(wn: Any, gt: str, answer: str) -> bool:
    """``Script/evaluation_LRSVQA.py`` as published: lower-case, equal, or any synset pair with
    path_similarity > 0.8 (written out here independently of the code under test)."""
    gt, answer = gt.lower(), answer.lower()
    if gt == answer:
        return True
    for s1 in wn.synsets(gt):
        for s2 in wn.synsets(answer):
            sim = s1.path_similarity(s2)
            if sim is not None and sim > 0.8:
                return True
    return False


GOLDEN = [
    # (ground truth, answer, official verdict: "exact" | "synonym" | None)
    ("yes", "yes", "exact"),
    ("Yes", "yes", "exact"),  # lower-cased
    ("tennis court", "tennis court", "exact"),  # multi-word: only an exact match counts
    ("Tennis Court", "tennis court", "exact"),
    ("car", "automobile", "synonym"),
    ("gray", "grey", "synonym"),
    ("plane", "airplane", "synonym"),
    ("two", "2", "synonym"),
    ("small", "little", "synonym"),
    ("middle", "center", "synonym"),
    ("cars", "car", "synonym"),  # WordNet's morphology finds "car" for "cars"
    ("ship", "boat", None),
    ("yes", "no", None),
    ("harbor", "port", None),
    ("white", "black", None),
    ("tennis court", "court", None),
    ("tennis court", "tennis_court", None),  # WordNet spells it with "_"; the official rule does not convert
    ("car", "car.", None),  # trailing punctuation is wrong under the official rule
    ("yes", "Yes.", None),
    ("twenty one", "21", None),
]


@pytest.mark.parametrize(("gt", "answer", "how"), GOLDEN)
def test_golden_cases_and_published_rule_agree(wordnet: Any, gt: str, answer: str, how: str | None) -> None:
    assert SynonymRule(wordnet).judge(gt, answer) == how
    assert published_rule(wordnet, gt, answer) is (how is not None)


def test_shared_synset_equals_path_similarity_over_a_vocabulary(wordnet: Any) -> None:
    """``> 0.8`` is distance 0: on all pairs of a remote-sensing vocabulary both forms agree."""
    vocab = (  # noqa: SIM905
        "car automobile plane airplane ship boat gray grey white two 2 small little large big yes no round "
        "circular urban rural center middle harbor port sea ocean"
    ).split()
    rule = SynonymRule(wordnet)
    pairs = list(itertools.combinations(vocab, 2))
    matches = [(a, b) for a, b in pairs if published_rule(wordnet, a, b)]
    assert all((rule.judge(a, b) is not None) == ((a, b) in matches) for a, b in pairs)
    assert sorted(matches) == sorted(
        [
            ("car", "automobile"),
            ("plane", "airplane"),
            ("gray", "grey"),
            ("two", "2"),
            ("small", "little"),
            ("large", "big"),
            ("round", "circular"),
            ("center", "middle"),
            ("sea", "ocean"),
        ]
    )


def test_normalized_rule_is_separate(wordnet: Any) -> None:
    strict, loose = SynonymRule(wordnet), SynonymRule(wordnet, normalize=True)
    assert normalize(" Car. ") == "car"
    assert normalize("twenty-one") == "21" and normalize("twenty one") == "21" and normalize("Three!") == "3"
    assert normalize("tennis-court") == "tennis-court"  # a hyphen inside a word stays
    for gt, ans in [("car", "car."), ("yes", "Yes."), ("21", "twenty one"), ("gray", "grey.")]:
        assert strict.judge(gt, ans) is None
        assert loose.judge(gt, ans) is not None


def test_which_wordnet_is_reported(wordnet: Any) -> None:
    info = load_wordnet()[1]
    assert info.version == "3.0"
    assert "WordNet 3.0" in info.describe() and info.path in info.describe()


def test_missing_wordnet_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("LRS_VQA_WORDNET", str(tmp_path))
    with pytest.raises(WordNetMissingError, match="holds no WordNet database"):
        load_wordnet()
    answers = tmp_path / "a.jsonl"
    answers.write_text(
        json.dumps({"question_id": "FAIR_1", "text": "a", "ground_truth": "a", "category": "c"})
    )
    assert main(["score", str(answers)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "WordNet" in err


def test_no_wordnet_anywhere_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import lrs_vqa.wordnet as wordnet_module

    monkeypatch.delenv("LRS_VQA_WORDNET", raising=False)
    monkeypatch.setattr(wordnet_module, "_candidates", lambda: [])
    with pytest.raises(
        WordNetMissingError, match=r"no WordNet database found; install .*wordnet-base"
    ) as exc:
        load_wordnet()
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------- a hand-computed small file


def _row(qid: str, category: str, gt: str, text: str | None, **extra: object) -> str:
    d: dict[str, object] = {"question_id": qid, "category": category, "ground_truth": gt, **extra}
    if text is not None:
        d["text"] = text
    return json.dumps(d)


@pytest.fixture
def small_answers(tmp_path: Path) -> Path:
    lines = [
        _row("FAIR_1", "count", "2", "2"),  # exact
        _row("FAIR_2", "count", "3", "three"),  # synonym
        _row("FAIR_3", "count", "4", "5"),  # wrong
        _row("FAIR_4", "reasoning", "yes", "no"),  # wrong
        _row("GLH-Bridge_1", "object color", "gray", "grey"),  # synonym
        _row("GLH-Bridge_2", "rural or urban", "urban", "urban"),
        _row("GLH-Bridge_3", "rural or urban", "rural", "rural."),  # wrong under the official rule
        _row("STAR_1", "object category", "ship", "boat"),  # wrong
        _row("STAR_2", "object category", "car", "automobile"),  # synonym
        _row("STAR_3", "count", "1", None),  # missing text: wrong, listed
        "{not json",  # line 11
        _row("STAR_4", "count", "", "1"),  # line 12: empty ground truth: listed, not scored
        _row("FAIR_1", "count", "2", "7"),  # line 13: duplicate id: listed, the first row counts
        json.dumps([1, 2]),  # line 14: not an object
        json.dumps({"category": "count", "ground_truth": "1", "text": "1"}),  # line 15: no id
    ]
    p = tmp_path / "answers.jsonl"
    p.write_text("\n".join(lines) + "\n\n")
    return p


def test_oa_aa_per_subset_hand_computed(wordnet: Any, small_answers: Path) -> None:
    report = score_file(small_answers, normalize=True)
    subsets = {s.name: s for s in report.official.subsets}
    assert list(subsets) == ["FAIR", "GLH-Bridge", "STAR"]
    fair, glh, star = subsets["FAIR"], subsets["GLH-Bridge"], subsets["STAR"]
    # FAIR: count 2/3, reasoning 0/1 -> OA 2/4, AA (66.67 + 0) / 2
    assert {c.category: (c.correct, c.total) for c in fair.categories} == {
        "count": (2, 3),
        "reasoning": (0, 1),
    }
    assert fair.oa == pytest.approx(50.0) and fair.aa == pytest.approx(100 / 3)
    # GLH-Bridge: colour 1/1, rural or urban 1/2 -> OA 2/3, AA 75
    assert glh.oa == pytest.approx(200 / 3) and glh.aa == pytest.approx(75.0)
    # STAR: object category 1/2, count 0/1 (missing text) -> OA 1/3, AA 25
    assert {c.category: (c.correct, c.total) for c in star.categories} == {
        "count": (0, 1),
        "object category": (1, 2),
    }
    assert star.oa == pytest.approx(100 / 3) and star.aa == pytest.approx(25.0)
    # Overall pools the rows: count 2/4, reasoning 0/1, colour 1/1, rural 1/2, category 1/2 -> 5/10
    overall = report.official.overall
    assert (overall.correct, overall.total) == (5, 10)
    assert overall.aa == pytest.approx((50 + 0 + 100 + 50 + 50) / 5)
    assert report.official.mean_subset_aa == pytest.approx((100 / 3 + 75 + 25) / 3)
    assert (report.official.exact_matches, report.official.synonym_matches) == (2, 3)
    # The normalized rule also accepts "rural." and is reported on its own.
    assert report.normalized is not None and report.normalized.overall.correct == 6
    assert report.rows_read == 15 and report.rows_scored == 10
    bad = {b.line: b.reason for b in report.bad_rows}
    assert sorted(bad) == [10, 11, 12, 13, 14, 15]
    assert "missing text" in bad[10] and "invalid JSON" in bad[11] and "ground_truth" in bad[12]
    assert "duplicate question_id (first at line 1)" in bad[13]
    assert "not a JSON object" in bad[14] and "missing question_id" in bad[15]


def test_score_cli_json_table_and_strict(wordnet: Any, small_answers: Path, capsys) -> None:
    assert main(["score", str(small_answers), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["benchmark"] == "lrs-vqa"
    assert data["official"]["overall"]["oa"] == pytest.approx(50.0)
    assert data["normalized"] is None
    assert data["wordnet"]["version"] == "3.0" and "WordNet 3.0" in data["wordnet"]["description"]
    assert len(data["bad_rows"]) == 6
    assert main(["score", str(small_answers), "--normalize"]) == 0
    captured = capsys.readouterr()
    assert "OA" in captured.out and "NOT the official figure" in captured.out
    assert "6 bad rows" in captured.err and "line 11: invalid JSON" in captured.err
    assert main(["score", str(small_answers), "--strict"]) == 1
    assert main(["score", str(small_answers.with_name("absent.jsonl"))]) == 2


def test_official_answer_file_formats(wordnet: Any, tmp_path: Path) -> None:
    """What the official inference scripts write, and the ``id`` key their scorer reads, both score."""
    official = {
        "question_id": "STAR_9",
        "prompt": "What is it?",
        "category": "object category",
        "text": "airplane",
        "ground_truth": "plane",
        "answer_id": "Zx8",
        "model_id": "llava",
        "metadata": {},
        "ori_hbox": [1, 2, 3, 4],
    }
    by_id = {"id": "FAIR_3", "category": "count", "text": "2", "ground_truth": "2"}
    p = tmp_path / "official.jsonl"
    p.write_text(json.dumps(official) + "\n" + json.dumps(by_id) + "\n")
    report = score_file(p)
    assert not report.bad_rows
    assert [(s.name, s.correct, s.total) for s in report.official.subsets] == [("FAIR", 1, 1), ("STAR", 1, 1)]


# ------------------------------------------------------------------------------------------ the real file

needs_real_file = pytest.mark.skipif(
    not REAL_QUESTIONS.is_file(), reason=f"the benchmark's question file is not at {REAL_QUESTIONS}"
)


@needs_real_file
def test_real_question_file_scored_against_itself(wordnet: Any) -> None:
    rows, bad = read_rows(REAL_QUESTIONS)
    assert len(rows) == 7333 and not bad
    as_answers = [Row(r.line, {**r.data, "text": r.data["ground_truth"]}) for r in rows]
    report = score_lrs(as_answers, bad, str(REAL_QUESTIONS))
    assert report.rows_scored == 7333 and not report.bad_rows
    totals = {s.name: s.total for s in report.official.subsets}
    assert totals == {"FAIR": 2272, "GLH-Bridge": 1062, "STAR": 3999}
    for group in [*report.official.subsets, report.official.overall]:
        assert group.oa == 100.0 and group.aa == 100.0
        assert all(c.accuracy == 100.0 for c in group.categories)
    counts = {c.category: c.total for c in report.official.overall.categories}
    assert counts == {
        "count": 1199,
        "reasoning": 1000,
        "object status": 1000,
        "object category": 987,
        "object shape": 885,
        "object color": 765,
        "rural or urban": 1252,
        "object background": 245,
    }
    assert report.official.exact_matches == 7333


@needs_real_file
def test_real_question_file_answered_wrongly_is_not_100(wordnet: Any) -> None:
    """Every answer one place off: a sanity check that the 100% above is earned (and a timing of the synonym
    path, which every wrong answer takes)."""
    rows, bad = read_rows(REAL_QUESTIONS)
    truths = [r.data["ground_truth"] for r in rows]
    shifted = [Row(r.line, {**r.data, "text": truths[i - 1]}) for i, r in enumerate(rows)]
    report = score_lrs(shifted, bad, str(REAL_QUESTIONS))
    assert report.official.overall.oa < 60.0
    assert report.seconds < 30.0


# ------------------------------------------------------------------------------------------ MME-RealWorld

CHOICES = ["(A) blue", "(B) red", "(C) green", "(D) white", "(E) The image does not feature the color."]


@pytest.mark.parametrize(
    ("output", "letter"),
    [
        ("B", "B"),
        ("The best answer is C", "C"),
        ("(D) white", "D"),
        ("red", "B"),  # no letter: substring of a choice
        ("Bus", "B"),  # the official rule takes the first capital A-E anywhere
        ("", "A"),  # the official substring rule: "" is in every choice, so the first one
        ("it is probably something that i cannot really tell from this picture at all", ""),
        ("purple", ""),
    ],
)
def test_mme_letter_extraction(output: str, letter: str) -> None:
    assert extract_letter(output, CHOICES) == letter


def _mme_record(qid: str, category: str, truth: str, output: str | None = None) -> dict[str, object]:
    d: dict[str, object] = {
        "Question_id": qid,
        "Image": f"remote_sensing/{qid}.png",
        "Text": "What color is the roof?",
        "Answer choices": CHOICES,
        "Ground truth": truth,
        "Task": "Perception",
        "Subtask": "Remote Sensing",
        "Category": category,
    }
    if output is not None:
        d["Output"] = output
    return d


def test_mme_prompt_and_scores(tmp_path: Path, capsys) -> None:
    prompt = mme_prompt(_mme_record("q", "color", "B"))
    assert prompt.startswith("What color is the roof? The choices are listed below:")
    assert "\n(A) blue\n(B) red\n" in prompt and prompt.endswith("(A, B, C, D, or E) of the correct option.")
    records = [
        _mme_record("1", "color", "B", "B"),
        _mme_record("2", "color", "A", "C"),
        _mme_record("3", "count", "D", "The answer is D"),
        _mme_record("4", "Position/Attribute", "E", "E"),  # category folded as the official script does
        {**_mme_record("5", "count", "A", ""), "error": "unreadable image"},  # failed: wrong, not "A"
    ]
    p = (
        tmp_path / "mme.json"
    )  # the official launcher's misnamed merge: a .json file of JSON lines is also read
    p.write_text(json.dumps(records))
    report = score_file(p)
    assert report.benchmark == "mme-realworld"
    assert (report.correct, report.rows_scored) == (3, 5) and report.accuracy == pytest.approx(60.0)
    cats = {c.category: (c.correct, c.total, c.e_choices) for c in report.categories}
    assert cats == {"color": (1, 2, 0), "count": (1, 2, 0), "position/attribute": (1, 1, 1)}
    assert [b.line for b in report.bad_rows] == [5] and "answer failed" in report.bad_rows[0].reason
    assert main(["score", str(p), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(60.0)
    rows, bad = read_rows(p)
    assert score_mme(rows[:1], bad, "x").accuracy == 100.0
