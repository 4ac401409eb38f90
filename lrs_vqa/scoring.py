"""The LRS-VQA benchmark's official scoring rule, OA and AA per sub-dataset, and answer-file checking.

Official rule (``Script/evaluation_LRSVQA.py`` of the benchmark): lower-case the ground truth and the answer;
correct if they are equal, else correct if some pair of their WordNet synsets has ``path_similarity > 0.8``.
NLTK's path similarity is ``1 / (1 + distance)``, so ``> 0.8`` holds only at distance 0, i.e. when the two
strings **share a synset**; that is what is computed here (``tests/test_scoring.py`` checks both forms give
the same verdict). Nothing else is normalised: ``"car."`` is wrong for ``"car"``. Multi-word strings are
looked up as they are and so only match exactly.

``--normalize`` adds a second, clearly separate figure: punctuation stripped, whitespace collapsed, number
words as digits, then the same rule.

Accuracies are percentages. Per group: per-category accuracy, OA = correct / total, AA = the unweighted mean
of the per-category accuracies (the paper's LRS-FAIR / LRS-Bridge / LRS-STAR columns are AA). Groups are the
``question_id`` prefix before the first ``_`` (``FAIR``, ``GLH-Bridge``, ``STAR``), as the official script.
"Overall" pools every row (categories pooled across sub-datasets); ``mean_subset_aa`` is the mean of the
sub-datasets' AA.
"""

from __future__ import annotations

import re
import string
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from lrs_vqa.rows import BadRow, Row, text_field
from lrs_vqa.wordnet import WordNetInfo, load_wordnet

SUBSET_ORDER = ("FAIR", "GLH-Bridge", "STAR")
RULES = ("official", "normalized")

# Rows missing only the answer are scored as wrong, as the official script does (it reads a missing ``text``
# as ""), and listed; rows that cannot be attributed to a question or category are listed and not scored.
MISSING_TEXT = "missing text (answer): scored as wrong, as the official scorer does"


class SynonymRule:
    """Equal after lower-casing, or sharing a WordNet synset (``normalize``: :func:`normalize` first)."""

    def __init__(self, wordnet: Any, *, normalize: bool = False) -> None:
        self.wordnet = wordnet
        self.normalize = normalize
        self._synsets: dict[str, frozenset[Any]] = {}

    def synsets(self, word: str) -> frozenset[Any]:
        found = self._synsets.get(word)
        if found is None:
            found = self._synsets[word] = frozenset(self.wordnet.synsets(word))
        return found

    def judge(self, ground_truth: str, answer: str) -> str | None:
        """``"exact"`` or ``"synonym"`` when correct, None when wrong."""
        gt, ans = ground_truth.lower(), answer.lower()
        if self.normalize:
            gt, ans = normalize(gt), normalize(ans)
        if gt == ans:
            return "exact"
        if self.synsets(gt) & self.synsets(ans):
            return "synonym"
        return None


_UNITS = (  # noqa: SIM905
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = {
    w: 10 * i
    for i, w in enumerate(("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"), 2)
}
_NUMBER_WORDS = {w: i for i, w in enumerate(_UNITS)} | _TENS | {"hundred": 100}
_PUNCT = re.escape(string.punctuation)


def _number(text: str) -> str | None:
    """``"twenty-one"`` → ``"21"``; None unless the whole string is a number word (0..100)."""
    words = text.replace("-", " ").split()
    if len(words) == 1 and words[0] in _NUMBER_WORDS:
        return str(_NUMBER_WORDS[words[0]])
    if len(words) == 2 and words[0] in _TENS and _NUMBER_WORDS.get(words[1], 10) < 10:
        return str(_TENS[words[0]] + _NUMBER_WORDS[words[1]])
    if words == ["a", "hundred"] or words == ["one", "hundred"]:
        return "100"
    return None


def normalize(text: str) -> str:
    """The extended rule's normalisation: lower case, punctuation around and between words removed
    (hyphens and apostrophes inside a word kept), whitespace collapsed, a number word as digits."""
    text = text.lower().strip()
    text = re.sub(rf"(?<![\w])[{_PUNCT}]+|[{_PUNCT}]+(?![\w])", " ", text)
    text = " ".join(text.split())
    return _number(text) or text


@dataclass(frozen=True)
class CategoryScore:
    category: str
    correct: int
    total: int
    accuracy: float  # percent


@dataclass(frozen=True)
class GroupScore:
    """One sub-dataset (or all rows): per-category accuracy, OA and AA."""

    name: str
    correct: int
    total: int
    oa: float  # percent: correct / total
    aa: float  # percent: unweighted mean of the category accuracies
    categories: tuple[CategoryScore, ...]


@dataclass(frozen=True)
class RuleScores:
    rule: str  # "official" | "normalized"
    subsets: tuple[GroupScore, ...]
    overall: GroupScore
    mean_subset_aa: float  # mean of the sub-datasets' AA (the LRS part of the paper's "Avg. Acc")
    exact_matches: int
    synonym_matches: int


@dataclass(frozen=True)
class ScoredRow:
    question_id: str
    subset: str
    category: str
    ground_truth: str
    answer: str


@dataclass(frozen=True)
class LRSScoreReport:
    """Everything ``lrs-vqa score`` prints about an LRS-VQA answer file."""

    path: str
    rows_read: int  # non-blank lines, good or bad
    rows_scored: int
    official: RuleScores
    normalized: RuleScores | None
    bad_rows: tuple[BadRow, ...]
    wordnet: WordNetInfo
    seconds: float
    benchmark: str = "lrs-vqa"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["wordnet"]["description"] = self.wordnet.describe()
        return out


def _pct(num: int, den: int) -> float:
    return 100.0 * num / den if den else 0.0


def _group(name: str, verdicts: Iterable[tuple[str, bool]]) -> GroupScore:
    correct: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for category, ok in verdicts:
        total[category] += 1
        correct[category] += ok
    cats = tuple(CategoryScore(c, correct[c], total[c], _pct(correct[c], total[c])) for c in sorted(total))
    n_ok, n = sum(correct.values()), sum(total.values())
    aa = sum(c.accuracy for c in cats) / len(cats) if cats else 0.0
    return GroupScore(name, n_ok, n, _pct(n_ok, n), aa, cats)


def _subset_key(name: str) -> tuple[int, str]:
    return (SUBSET_ORDER.index(name) if name in SUBSET_ORDER else len(SUBSET_ORDER), name)


def score_rows(rows: Iterable[ScoredRow], rule: SynonymRule) -> RuleScores:
    by_subset: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    pooled: list[tuple[str, bool]] = []
    exact = synonym = 0
    for row in rows:
        how = rule.judge(row.ground_truth, row.answer)
        exact += how == "exact"
        synonym += how == "synonym"
        by_subset[row.subset].append((row.category, how is not None))
        pooled.append((row.category, how is not None))
    subsets = tuple(_group(name, by_subset[name]) for name in sorted(by_subset, key=_subset_key))
    mean_aa = sum(s.aa for s in subsets) / len(subsets) if subsets else 0.0
    return RuleScores(
        rule="normalized" if rule.normalize else "official",
        subsets=subsets,
        overall=_group("overall", pooled),
        mean_subset_aa=mean_aa,
        exact_matches=exact,
        synonym_matches=synonym,
    )


def answer_rows(rows: list[Row], bad: list[BadRow]) -> tuple[list[ScoredRow], list[BadRow]]:
    """Check LRS-VQA answer rows: ``question_id`` (or the official scorer's ``id``), ``ground_truth``,
    ``category``, ``text``. Duplicated ids keep the first row."""
    bad = list(bad)
    seen: dict[str, int] = {}
    good: list[ScoredRow] = []
    for row in rows:
        d = row.data
        qid = text_field(d, "question_id") or text_field(d, "id")
        if qid is None:
            bad.append(BadRow(row.line, "missing question_id"))
            continue
        if qid in seen:
            bad.append(BadRow(row.line, f"duplicate question_id (first at line {seen[qid]}); ignored", qid))
            continue
        seen[qid] = row.line
        gt, category = text_field(d, "ground_truth"), text_field(d, "category")
        if gt is None or category is None:
            missing = " and ".join(k for k, v in (("ground_truth", gt), ("category", category)) if v is None)
            bad.append(BadRow(row.line, f"missing or empty {missing}; not scored", qid))
            continue
        answer = d.get("text")
        if isinstance(d.get("error"), str):  # ``eval`` could not answer it (unreadable image, ...)
            bad.append(BadRow(row.line, f"answer failed ({d['error']}): scored as wrong", qid))
            answer = ""
        elif not isinstance(answer, str):
            bad.append(BadRow(row.line, MISSING_TEXT, qid))
            answer = ""
        good.append(ScoredRow(qid, qid.split("_")[0], category, d["ground_truth"], answer))
    bad.sort(key=lambda b: b.line)
    return good, bad


def score_lrs(rows: list[Row], bad: list[BadRow], path: str, *, normalize: bool = False) -> LRSScoreReport:
    t0 = time.perf_counter()
    wordnet, info = load_wordnet()
    good, all_bad = answer_rows(rows, bad)
    official = score_rows(good, SynonymRule(wordnet))
    extended = score_rows(good, SynonymRule(wordnet, normalize=True)) if normalize else None
    notes = ()
    if info.version != "3.0":
        notes = (
            f"WordNet {info.version} is not the 3.0 the official scorer reads; synonym matches may differ",
        )
    return LRSScoreReport(
        path=path,
        rows_read=len(rows) + len(bad),
        rows_scored=len(good),
        official=official,
        normalized=extended,
        bad_rows=tuple(all_bad),
        wordnet=info,
        seconds=time.perf_counter() - t0,
        notes=notes,
    )
