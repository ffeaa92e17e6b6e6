"""WordNet for METEOR: NLTK's own `WordNetCorpusReader` over a WordNet 3.0 database directory (Debian's
wordnet-base), its missing `lexnames` file derived from the lexnames(5WN) man page the same package ships;
built once per process, never downloaded (`unavailable` says why not, for the 400 that refuses `meteor`)."""

from __future__ import annotations

import gzip
import io
import re
import threading
import warnings
from pathlib import Path
from typing import Any

# The lexnames(5WN) man page of Debian's wordnet-base: its table lines ("00<TAB>adj.all<TAB>all adjective
# clusters") are the lexicographer file list, in file-number order, that WordNet's own `lexnames` file holds.
LEXNAMES_MAN_PAGE = Path("/usr/share/man/man5/lexnames.5WN.gz")
# The database files NLTK's reader reads: index.* and *.exc as it is built, data.* as it looks synsets up.
DATABASE_FILES = tuple(f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")) + tuple(
    f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")
)
# The third field of a lexnames line: the syntactic category, by the file name's prefix (lexnames(5WN)).
POS_NUMBERS = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

_TABLE_LINE = re.compile(r"^(\d{2})\t(\w+\.\w+)\s*\t")
# One lock for building and reading: NLTK's reader seeks and reads file handles its lookups share.
_lock = threading.RLock()
_readers: dict[Path, Any] = {}


def lexnames_from_man_page(text: str) -> str:
    """WordNet's `lexnames` file ("NN<TAB>name<TAB>POSNUM" lines) from the lexnames(5WN) man page's table."""
    lines: list[str] = []
    for number, name in (m.groups() for m in map(_TABLE_LINE.match, text.splitlines()) if m):
        if int(number) != len(lines):
            raise ValueError(f"lexnames(5WN): file number {number} out of order (expected {len(lines):02d})")
        lines.append(f"{number}\t{name}\t{POS_NUMBERS[name.split('.')[0]]}\n")
    if not lines:
        raise ValueError("lexnames(5WN): no table of lexicographer files")
    return "".join(lines)


def unavailable(directory: Path) -> str | None:
    """Why METEOR cannot run on the WordNet at `directory` (a reason to finish "it …": "needs …"), or None."""
    missing = [name for name in DATABASE_FILES if not (directory / name).is_file()]
    if missing:
        return (
            f"needs WordNet 3.0's database (Debian's wordnet-base), and FTSERVE_WORDNET_DIR={directory} "
            f"has no {', '.join(missing[:3])}{'…' if len(missing) > 3 else ''}"
        )
    if not (directory / "lexnames").is_file() and not LEXNAMES_MAN_PAGE.is_file():
        return (
            f"needs WordNet's lexnames list: {directory} has no lexnames file and wordnet-base's lexnames(5WN) "
            f"man page ({LEXNAMES_MAN_PAGE}) is not installed"
        )
    return None


def reader(directory: Path) -> Any:
    """NLTK's WordNet reader over `directory`, built on first use and kept for the process (about 2 s and 70 MB:
    it reads every index). The caller holds `lock()` while it reads: the reader shares file handles."""
    directory = directory.resolve()
    with _lock:
        if directory not in _readers:
            _readers[directory] = _build(directory)
        return _readers[directory]


def lock() -> threading.RLock:
    """Held around every use of a reader (re-entrant: `reader` takes it too)."""
    return _lock


def _build(directory: Path) -> Any:
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    # NLTK opens corpus files only under the roots on nltk.data.path (its path sandbox): register this one.
    if str(directory) not in nltk.data.path:
        nltk.data.path.append(str(directory))
    lexnames = None
    if not (directory / "lexnames").is_file():
        lexnames = lexnames_from_man_page(gzip.decompress(LEXNAMES_MAN_PAGE.read_bytes()).decode("utf-8"))

    class Reader(WordNetCorpusReader):  # type: ignore[misc]
        """NLTK's reader, English only (no Open Multilingual Wordnet: METEOR reads English synsets)."""

        def open(self, file: str) -> Any:
            # `lexnames` from the man page's table when the directory has none (a reader directory of symlinks
            # plus that one file will not do: NLTK refuses a corpus file that resolves outside the reader's root).
            if file == "lexnames" and lexnames is not None:
                return io.StringIO(lexnames)
            return super().open(file)

        def map_wn(self, version: str = "wordnet") -> None:
            # NLTK maps WordNet 3.0's synsets to the loaded version's for the multilingual data alone, reading
            # both versions' index.sense through its `wordnet` corpus download: no multilingual data, no map.
            return None

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return Reader(str(directory), None)
