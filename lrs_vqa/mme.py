"""MME-RealWorld (remote-sensing subset): its question format, prompt, and option-letter scoring.

Question file ``MME_RealWorld_RS.json``: a JSON list of records with ``Question_id``, ``Image`` (relative,
e.g. ``remote_sensing/03553_Toronto.png``), ``Text``, ``Answer choices`` (``"(A) ..."`` strings), ``Ground
truth`` (a letter), ``Task``, ``Subtask``, ``Category``. An answer row is the record plus ``Output`` (what the
LRS-VQA launcher writes). Scoring follows MME-RealWorld's ``evaluation/eval_your_results.py``, quirks
included, so figures compare with published ones: the letter is the first ``A``-``E`` anywhere in the output
after some answer phrases are removed; an output of more than 10 words without such a letter is wrong; with no
letter the output is looked up as a substring of the choices (so an empty output picks the first choice). The
paper's MME-RW-RS figure is the sample-weighted overall accuracy (percent here).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lrs_vqa.benchmarks import QuestionFields, register_benchmark
from lrs_vqa.rows import BadRow, Row

if TYPE_CHECKING:
    from rich.console import Console

CHOICE_PROMPT = " The choices are listed below: \n"
END_PROMPT = (
    "Select the best answer to the above multiple-choice question based on the image. Respond with only the "
    "letter (A, B, C, D, or E) of the correct option."
)
# The official list lacks two commas, so Python joins those literals: these are the phrases it really strips.
ANSWER_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
)
REQUIRED = ("Question_id", "Image", "Text", "Answer choices", "Ground truth", "Task", "Subtask", "Category")


def mme_prompt(record: dict[str, Any]) -> str:
    """The question text the LRS-VQA launcher sends (the chat template and image token are the adapter's)."""
    question = record["Text"] + CHOICE_PROMPT
    body = f"{question}\n" + "\n".join(record["Answer choices"])
    return body.strip() + "\n" + END_PROMPT


def extract_letter(output: str, choices: list[str]) -> str:
    s = output.strip()
    for prefix in ANSWER_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCDE]", s):
        return ""
    match = re.search(r"[ABCDE]", s)
    if match is None:
        for choice in choices:
            if s.lower() in choice.lower():
                return choice[1]
        return ""
    return match[0]


def record_problem(d: dict[str, Any], *, answered: bool) -> str | None:
    """Why a record cannot be used (None when it can)."""
    missing = [k for k in REQUIRED if k not in d or d[k] in (None, "")]
    if answered and not isinstance(d.get("Output"), str):
        missing.append("Output")
    if missing:
        return "missing " + ", ".join(missing)
    choices = d["Answer choices"]
    if not isinstance(choices, list) or not all(isinstance(c, str) and len(c) >= 2 for c in choices):
        return "Answer choices must be a list of strings like '(A) ...'"
    if not all(
        isinstance(d[k], str) for k in ("Image", "Text", "Ground truth", "Task", "Subtask", "Category")
    ):
        return "Image, Text, Ground truth, Task, Subtask and Category must be strings"
    return None


def mme_category(category: str) -> str:
    category = category.lower()
    return category.split("/")[0] + "/attribute" if "attribute" in category else category


@dataclass(frozen=True)
class MMECategoryScore:
    task: str
    subtask: str
    category: str
    correct: int
    total: int
    accuracy: float  # percent
    e_choices: int  # outputs read as "E" (the official script reports them)


@dataclass(frozen=True)
class MMEScoreReport:
    path: str
    rows_read: int
    rows_scored: int
    correct: int
    accuracy: float  # percent, sample-weighted over every scored row (the paper's figure)
    categories: tuple[MMECategoryScore, ...]
    subtasks: dict[str, float]  # "Task/Subtask" -> percent
    bad_rows: tuple[BadRow, ...]
    seconds: float
    benchmark: str = "mme-realworld"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_mme(rows: list[Row], bad: list[BadRow], path: str) -> MMEScoreReport:
    t0 = time.perf_counter()
    rows_read = len(rows) + len(bad)
    bad = list(bad)
    seen: dict[str, int] = {}
    counts: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in rows:
        d = row.data
        qid = question_id(d)
        problem = record_problem(d, answered=True)
        if qid is not None and qid in seen:
            problem = f"duplicate Question_id (first at line {seen[qid]}); ignored"
        if problem is not None:
            bad.append(BadRow(row.line, problem, qid))
            continue
        assert qid is not None
        seen[qid] = row.line
        letter = extract_letter(d["Output"], d["Answer choices"])
        if isinstance(d.get("error"), str):  # an empty Output would read as "A" (the official substring rule)
            bad.append(BadRow(row.line, f"answer failed ({d['error']}): scored as wrong", qid))
            letter = ""
        c = counts[(d["Task"], d["Subtask"], mme_category(d["Category"]))]
        c[0] += letter == d["Ground truth"]
        c[1] += 1
        c[2] += letter == "E"
    cats = tuple(
        MMECategoryScore(t, s, cat, ok, n, 100.0 * ok / n, e)
        for (t, s, cat), (ok, n, e) in sorted(counts.items())
    )
    sub: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for c in cats:
        sub[f"{c.task}/{c.subtask}"][0] += c.correct
        sub[f"{c.task}/{c.subtask}"][1] += c.total
    correct, total = sum(c.correct for c in cats), sum(c.total for c in cats)
    bad.sort(key=lambda b: b.line)
    return MMEScoreReport(
        path=path,
        rows_read=rows_read,
        rows_scored=total,
        correct=correct,
        accuracy=100.0 * correct / total if total else 0.0,
        categories=cats,
        subtasks={k: 100.0 * v[0] / v[1] for k, v in sub.items()},
        bad_rows=tuple(bad),
        seconds=time.perf_counter() - t0,
    )


def question_id(d: dict[str, Any]) -> str | None:
    """MME-RealWorld ids may be numbers or strings; compared as strings."""
    qid = d.get("Question_id")
    return None if qid is None or qid == "" else str(qid)


class MMERealWorld:
    name = "mme-realworld"
    help = "its RS question JSON, scored by option letter"
    needs_wordnet = False

    def claims(self, first_row: dict[str, Any]) -> bool:
        return "Question_id" in first_row and "question_id" not in first_row

    def read_question(self, row: dict[str, Any]) -> QuestionFields:
        return QuestionFields(question_id(row), row.get("Image"), record_problem(row, answered=False))

    def prompt(self, row: dict[str, Any]) -> str:
        return mme_prompt(row)

    def row_id(self, row: dict[str, Any]) -> str | None:
        return question_id(row)

    def answer_row(
        self, qid: str, image: str, prompt: str, record: dict[str, Any], text: str, extra: dict[str, Any]
    ) -> dict[str, Any]:
        return {**record, "Output": text, **extra}  # the record plus Output, as its launcher writes

    def score(self, rows: list[Row], bad: list[BadRow], path: str, *, normalize: bool) -> MMEScoreReport:
        return score_mme(rows, bad, path)  # option letters: no normalized rule

    def print_report(self, report: MMEScoreReport, out: Console, err: Console) -> None:
        from rich.table import Table

        table = Table(title=f"MME-RealWorld: {report.path}", title_justify="left")
        for col in ("task", "subtask", "category", "correct", "total", "acc %", "E"):
            table.add_column(col, justify="left" if col in ("task", "subtask", "category") else "right")
        for c in report.categories:
            table.add_row(
                c.task,
                c.subtask,
                c.category,
                str(c.correct),
                str(c.total),
                f"{c.accuracy:.2f}",
                str(c.e_choices),
            )
        out.print(table)
        out.print(
            f"Overall Acc (sample-weighted): {report.accuracy:.2f}% ({report.correct}/{report.rows_scored})"
        )


register_benchmark(MMERealWorld())
