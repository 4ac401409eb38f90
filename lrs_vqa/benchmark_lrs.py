"""The LRS-VQA benchmark: its question rows (JSONL with ``question_id``, ``image``, ``text``,
``ground_truth``, ``category``), the answer row the official scorer reads, and its scores
(``lrs_vqa.scoring``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lrs_vqa.benchmarks import QuestionFields, register_benchmark
from lrs_vqa.rows import BadRow, Row, text_field
from lrs_vqa.scoring import LRSScoreReport, RuleScores, score_lrs

if TYPE_CHECKING:
    from rich.console import Console

LRS_FIELDS = ("question_id", "image", "text", "ground_truth", "category")


class LRSVQA:
    name = "lrs-vqa"
    help = "JSONL, scored with the official rule"
    needs_wordnet = True

    def claims(self, first_row: dict[str, Any]) -> bool:
        return "question_id" in first_row

    def read_question(self, row: dict[str, Any]) -> QuestionFields:
        missing = [k for k in LRS_FIELDS if text_field(row, k) is None]
        problem = f"missing or empty {', '.join(missing)}" if missing else None
        return QuestionFields(text_field(row, "question_id"), row.get("image"), problem)

    def prompt(self, row: dict[str, Any]) -> str:
        return row["text"]

    def row_id(self, row: dict[str, Any]) -> str | None:
        return row.get("question_id") if isinstance(row.get("question_id"), str) else None

    def answer_row(
        self, qid: str, image: str, prompt: str, record: dict[str, Any], text: str, extra: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "question_id": qid,
            "id": qid,  # the official script groups by ``id``
            "prompt": prompt,
            "text": text,
            "ground_truth": record["ground_truth"],
            "category": record["category"],
            "image": image,
            **extra,
        }

    def score(self, rows: list[Row], bad: list[BadRow], path: str, *, normalize: bool) -> LRSScoreReport:
        return score_lrs(rows, bad, path, normalize=normalize)

    def print_report(self, report: LRSScoreReport, out: Console, err: Console) -> None:
        _print_rule_scores(out, report.official, f"LRS-VQA, official rule: {report.path}")
        if report.normalized is not None:
            _print_rule_scores(out, report.normalized, "normalized rule (NOT the official figure)")
        err.print(f"synonym rule: {report.wordnet.describe()}", markup=False, highlight=False)


def _print_rule_scores(out: Console, scores: RuleScores, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("sub-dataset", "category", "correct", "total", "acc %"):
        table.add_column(col, justify="left" if col in ("sub-dataset", "category") else "right")
    for group in [*scores.subsets, scores.overall]:
        for c in group.categories:
            table.add_row(group.name, c.category, str(c.correct), str(c.total), f"{c.accuracy:.2f}")
        table.add_row(group.name, "[bold]OA[/bold]", str(group.correct), str(group.total), f"{group.oa:.2f}")
        table.add_row(group.name, "[bold]AA[/bold]", "", "", f"{group.aa:.2f}", end_section=True)
    out.print(table)
    out.print(f"mean of the sub-datasets' AA: {scores.mean_subset_aa:.2f}")


register_benchmark(LRSVQA())
