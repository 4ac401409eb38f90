"""Reading row files (JSONL, a JSON list, CSV) with every unusable row counted and located, never dropped
silently."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrs_vqa.eval_errors import InputFileError


@dataclass(frozen=True)
class BadRow:
    """A row that was not used: where it is (1-based line, or item number in a JSON list) and why."""

    line: int
    reason: str
    row_id: str | None = None

    def describe(self) -> str:
        who = f" ({self.row_id})" if self.row_id else ""
        return f"line {self.line}{who}: {self.reason}"


@dataclass(frozen=True)
class Row:
    line: int
    data: dict[str, Any]


def read_rows(path: str | Path) -> tuple[list[Row], list[BadRow]]:
    """Rows of a ``.csv`` (header line required), a JSON list (file starting with ``[``) or JSONL.

    Blank lines are skipped; invalid JSON and non-object rows are bad rows."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{p}: no such file")
    try:
        text = p.read_text(encoding="utf-8-sig")  # -sig: spreadsheet exports often start with a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{p}: cannot read: {' '.join(str(exc).split())}") from None
    if p.suffix.lower() == ".csv":
        return _csv_rows(p, text)
    if text.lstrip().startswith("["):
        return _json_list_rows(p, text)
    rows: list[Row] = []
    bad: list[BadRow] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append(BadRow(n, f"invalid JSON ({exc.msg})"))
            continue
        if not isinstance(data, dict):
            bad.append(BadRow(n, f"not a JSON object (a {type(data).__name__})"))
            continue
        rows.append(Row(n, data))
    return rows, bad


def _json_list_rows(p: Path, text: str) -> tuple[list[Row], list[BadRow]]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{p}: invalid JSON list ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(items, list):
        raise InputFileError(f"{p}: expected a JSON list or JSON lines")
    rows, bad = [], []
    for n, item in enumerate(items, start=1):  # "line" is the item number here
        if isinstance(item, dict):
            rows.append(Row(n, item))
        else:
            bad.append(BadRow(n, f"item is not a JSON object (a {type(item).__name__})"))
    return rows, bad


def _csv_rows(p: Path, text: str) -> tuple[list[Row], list[BadRow]]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames:
        raise InputFileError(f"{p}: empty CSV (a header line is required)")
    rows, bad = [], []
    for record in reader:
        n = reader.line_num
        if None in record:  # more cells than header columns
            bad.append(BadRow(n, "more cells than header columns"))
            continue
        if all(v in (None, "") for v in record.values()):
            continue
        rows.append(Row(n, {k.strip(): (v if v is None else v.strip()) for k, v in record.items()}))
    return rows, bad


def text_field(data: dict[str, Any], key: str) -> str | None:
    """``data[key]`` when it is a non-empty string, else None."""
    value = data.get(key)
    return value if isinstance(value, str) and value.strip() else None
