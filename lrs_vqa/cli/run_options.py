"""Options of the long runs (``eval``, ``merge``, ``score``, ``batch``) with one meaning everywhere."""

from typing import Annotated

import typer

Resume = Annotated[bool, typer.Option(help="Continue the answers file in --output-dir (skips answered).")]
SkipBad = Annotated[bool, typer.Option(help="Ask the good rows of a file with malformed rows (listed).")]
Progress = Annotated[bool, typer.Option(help="Progress bar with ETA on stderr.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
Normalize = Annotated[
    bool,
    typer.Option(help="Also score with punctuation stripped and number words as digits (reported apart)."),
]
