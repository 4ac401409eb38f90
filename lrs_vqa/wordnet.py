"""Princeton WordNet read offline through NLTK, for the LRS-VQA scorer's synonym rule.

Where it looks, first hit wins:

1. ``$LRS_VQA_WORDNET`` — a folder holding ``index.noun``/``data.noun``/... (used alone when set);
2. NLTK's own ``corpora/wordnet`` (``nltk.download("wordnet")`` puts it there; the official scorer's source);
3. ``$WNSEARCHDIR``, ``$WNHOME/dict`` (WordNet's own variables), Debian's ``/usr/share/wordnet``
   (package ``wordnet-base``, which ``.ci/run`` installs), ``/usr/local/WordNet-3.0/dict``.

The Debian files are Princeton WordNet 3.0, the same database as ``nltk_data/corpora/wordnet``, but lack the
``lexnames`` file NLTK reads at start-up; its 45 fixed lines are supplied here.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrs_vqa.eval_errors import EvalError

ENV_VAR = "LRS_VQA_WORDNET"
_DB_FILES = ("index.noun", "data.noun", "index.verb", "data.verb", "index.adj", "data.adj")
_SYSTEM_DIRS = ("/usr/share/wordnet", "/usr/local/WordNet-3.0/dict", "/usr/local/share/wordnet")

# WordNet 3.0's lexicographer files (lexnames(5WN)): number, name, syntactic category.
_LEXNAMES = (  # noqa: SIM905 (one string reads better than 45 list items)
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
LEXNAMES_TEXT = "".join(
    f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)
)


class WordNetMissingError(EvalError):
    """No WordNet database was found (or it cannot be read); one-line message saying how to install one."""


@dataclass(frozen=True)
class WordNetInfo:
    """Which WordNet answered: reported beside every score."""

    source: str  # "env" | "nltk_data" | "system"
    path: str
    version: str  # from the database's own header, e.g. "3.0"
    reader: str  # e.g. "nltk 3.10.4"

    def describe(self) -> str:
        return f"WordNet {self.version} ({self.source}: {self.path}; {self.reader})"


def _has_db(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _DB_FILES)


def _nltk_data_root() -> Any | None:
    """NLTK's own ``corpora/wordnet`` (a folder or the downloader's zip), as an NLTK path pointer."""
    try:
        import nltk.data
    except ImportError:
        return None
    for name in ("corpora/wordnet.zip/wordnet/", "corpora/wordnet"):  # the order NLTK's own loader uses
        try:
            return nltk.data.find(name)
        except LookupError:
            continue
    return None


def _candidates() -> list[tuple[str, Any]]:
    env = os.environ.get(ENV_VAR)
    if env:
        return [("env", Path(env))]
    found: list[tuple[str, Any]] = []
    pointer = _nltk_data_root()
    if pointer is not None:
        found.append(("nltk_data", pointer))
    system = [os.environ.get("WNSEARCHDIR"), *(f"{h}/dict" for h in [os.environ.get("WNHOME")] if h)]
    found += [("system", Path(d)) for d in [*system, *_SYSTEM_DIRS] if d]
    return found


def _reader_class() -> type:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _OfflineWordNet(WordNetCorpusReader):  # type: ignore[misc]
        def open(self, file: str) -> Any:
            if file == "lexnames":  # not shipped by Debian's wordnet-base; fixed content in WordNet 3.x
                return io.StringIO(LEXNAMES_TEXT)
            return super().open(file)

        def map_wn(self, version: str = "wordnet") -> None:
            # NLTK would load the ``wordnet`` corpus again to map OMW data onto this one; no OMW is used.
            return None

    return _OfflineWordNet


_LOADED: dict[str, tuple[Any, WordNetInfo]] = {}


def _load(source: str, root: Any) -> tuple[Any, WordNetInfo]:
    import nltk
    import nltk.data

    key = str(root)
    if key in _LOADED:
        return _LOADED[key]
    if isinstance(root, Path):
        root = str(root.resolve())
        if root not in nltk.data.path:  # NLTK >= 3.10 reads corpora only under nltk.data.path (its sandbox)
            nltk.data.path.append(root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "multilingual functions are not available": intended
            reader = _reader_class()(root, None)
        version = str(reader.get_version())
    except (OSError, ValueError, AssertionError, LookupError) as exc:
        raise WordNetMissingError(f"cannot read WordNet at {key}: {' '.join(str(exc).split())}") from None
    path = getattr(root, "path", None) or str(root)  # a zip pointer names the zip file
    _LOADED[key] = reader, WordNetInfo(source, str(path), version, f"nltk {nltk.__version__}")
    return _LOADED[key]


def load_wordnet() -> tuple[Any, WordNetInfo]:
    """The first WordNet found (see the module docstring) and what it is; loaded once per process."""
    try:
        import nltk  # noqa: F401
    except ImportError:
        raise WordNetMissingError("nltk is not installed; pip install nltk") from None
    for source, root in _candidates():
        if not isinstance(root, Path):
            return _load(source, root)
        if _has_db(root):
            return _load(source, root)
        if source == "env":
            raise WordNetMissingError(
                f"${ENV_VAR}={root} holds no WordNet database (index.noun, data.noun...)"
            )
    raise WordNetMissingError(
        "no WordNet database found; install Debian's wordnet-base (apt-get install wordnet-base), or run "
        f"python -m nltk.downloader wordnet, or point ${ENV_VAR} at a WordNet dict folder"
    )
