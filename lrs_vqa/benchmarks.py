"""The one registry of benchmarks (question and answer file formats): LRS-VQA and MME-RealWorld.

A benchmark is one module defining a :class:`Benchmark` instance registered with ``register_benchmark``, and
its module name in ``_BUILTIN_MODULES``. ``eval`` / ``merge`` / ``score`` ask the registry which benchmark a
file belongs to (:func:`detect`) and call it for everything format-specific: reading a question row, the
answer row written for it, its id, scoring and printing the scores. The registry imports the benchmarks by
name on first lookup, so it depends on none of them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lrs_vqa.eval_errors import InputFileError
from lrs_vqa.rows import BadRow, Row, read_rows

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_BENCHMARK = "lrs-vqa"  # a file no other benchmark claims is read as LRS-VQA
_BUILTIN_MODULES = ("lrs_vqa.benchmark_lrs", "lrs_vqa.mme")


@dataclass(frozen=True)
class QuestionFields:
    """One question row as a benchmark reads it: ``problem`` set when the row is unusable."""

    qid: str | None
    image: Any  # the image path as written (a str when the row is good)
    problem: str | None


class Benchmark(Protocol):
    name: str
    help: str
    needs_wordnet: bool  # its scorer reads WordNet: eval checks for it before hours of answering

    def claims(self, first_row: dict[str, Any]) -> bool:
        """True if a question or answer file whose first row is this belongs to this benchmark."""
        ...

    def read_question(self, row: dict[str, Any]) -> QuestionFields: ...

    def prompt(self, row: dict[str, Any]) -> str:
        """The text the model is asked for a good question row."""
        ...

    def row_id(self, row: dict[str, Any]) -> str | None:
        """The question id of a question or answer row (resume and merge match rows by it)."""
        ...

    def answer_row(
        self, qid: str, image: str, prompt: str, record: dict[str, Any], text: str, extra: dict[str, Any]
    ) -> dict[str, Any]:
        """The answer row written for one question (``extra``: statistics, evidence, error)."""
        ...

    def score(self, rows: list[Row], bad: list[BadRow], path: str, *, normalize: bool) -> Any:
        """A score report (a dataclass with ``benchmark``, ``bad_rows``, ``notes`` and ``to_dict()``)."""
        ...

    def print_report(self, report: Any, out: Console, err: Console) -> None: ...


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in BENCHMARKS and BENCHMARKS[benchmark.name] is not benchmark:
        raise KeyError(f"benchmark {benchmark.name!r} is already registered")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def benchmark_names() -> tuple[str, ...]:
    _load_builtins()
    return tuple(BENCHMARKS)


def get_benchmark(name: str) -> Benchmark:
    _load_builtins()
    if name not in BENCHMARKS:
        raise InputFileError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def detect(rows: list[Row]) -> Benchmark:
    """The benchmark a file's rows belong to: the first that claims its first row, else LRS-VQA."""
    _load_builtins()
    if rows:
        for bench in BENCHMARKS.values():
            if bench.name != DEFAULT_BENCHMARK and bench.claims(rows[0].data):
                return bench
    return BENCHMARKS[DEFAULT_BENCHMARK]


def describe_benchmarks() -> str:
    _load_builtins()
    return ", ".join(f"{b.name} ({b.help})" for b in BENCHMARKS.values())


def score_file(path: str | Path, *, normalize: bool = False) -> Any:
    """Score an answer file of any registered benchmark (recognised by its rows)."""
    rows, bad = read_rows(path)
    if not rows and not bad:
        raise InputFileError(f"{path}: no rows")
    return detect(rows).score(rows, bad, str(path), normalize=normalize)
