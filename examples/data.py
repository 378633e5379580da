"""Dataset loaders, vocabularies and batching shared by the three examples.

Every loader reads both the official distribution format and the compact form kept in
``../shared/data`` (see its README). A missing dataset raises :class:`DataNotFoundError` naming
the paths tried and the official URL; a malformed file raises :class:`DataFormatError` naming the
file, the line and what was expected. Nothing here ever substitutes a toy data set.
"""

from __future__ import annotations

import gzip
import html
import os
import random
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

# ../shared/data relative to the repository root (examples/ lives in the repository root), or
# $FUSED_RNN_DATA where that is set (a checkout that is not next to shared/).
DEFAULT_DATA_ROOT = Path(
    os.environ.get("FUSED_RNN_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
CONLL2000_URL = "https://www.clips.uantwerpen.be/conll2000/chunking/ (train.txt.gz, test.txt.gz)"
UD_EWT_URL = "https://github.com/UniversalDependencies/UD_English-EWT (en_ewt-ud-*.conllu)"
MULTI30K_URL = "https://github.com/multi30k/dataset/tree/master/data/task1/raw"


class DataError(Exception):
    """Base class of the loaders' errors; the message is meant for the user as it is."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data set is not where it was looked for."""


class DataFormatError(DataError, ValueError):
    """A data file does not have the expected format."""


# ---------------------------------------------------------------------------------------------
# Files


def _open_text(path: Path):
    """Open a UTF-8 text file, transparently gunzipping ``*.gz``."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line_without_newline)``; decoding errors become DataFormatError."""
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                yield lineno, line.rstrip("\n").rstrip("\r")
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataFormatError(
            f"{path}: cannot be read as UTF-8 text ({type(e).__name__}: {e})"
        ) from e


def _find(candidates: Sequence[Path], what: str, url: str) -> Path:
    for c in candidates:
        if c.exists():
            return c
    tried = "\n  ".join(str(c) for c in candidates)
    raise DataNotFoundError(
        f"{what} not found. Looked for:\n  {tried}\n"
        f"Get it from {url} and pass its folder with --data "
        f"(the default is {DEFAULT_DATA_ROOT})."
    )


# ---------------------------------------------------------------------------------------------
# IMDB (Maas et al. 2011)

IMDB_LABELS = ("neg", "pos")


def load_imdb(root: str | Path, split: str) -> list[tuple[str, int]]:
    """Reviews of one split (``train`` or ``test``) as ``(text, label)``, label 0=neg, 1=pos.

    ``root`` may hold (directly or under ``imdb/``) the shared ``{split}.tsv.gz``, the official
    ``aclImdb/`` folder, or the official ``aclImdb_v1.tar.gz``; it may also be that folder or
    archive itself. Rows come in file order (sorted by label): shuffle before training.
    """
    if split not in ("train", "test"):
        raise ValueError(f"IMDB split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz")):
        return _imdb_from_tar(root, split)
    if (root / split / "pos").is_dir():  # root is the aclImdb folder itself
        return _imdb_from_dir(root, split)
    candidates = []
    for base in (root, root / "imdb"):
        candidates += [
            base / f"{split}.tsv.gz",
            base / f"{split}.tsv",
            base / "aclImdb",
            base / "aclImdb_v1.tar.gz",
        ]
    path = _find(candidates, f"IMDB {split} split", IMDB_URL)
    if path.is_dir():
        return _imdb_from_dir(path, split)
    if path.name.endswith(".tar.gz"):
        return _imdb_from_tar(path, split)
    return _imdb_from_tsv(path)


def _imdb_from_tsv(path: Path) -> list[tuple[str, int]]:
    out = []
    for lineno, line in _lines(path):
        # Split on the first 3 tabs only: 27 reviews contain a TAB in their text.
        parts = line.split("\t", 3)
        if len(parts) != 4 or parts[1] not in IMDB_LABELS or not parts[2].isdigit():
            raise DataFormatError(
                f"{path}:{lineno}: expected 'id<TAB>neg|pos<TAB>rating<TAB>text', got {line[:80]!r}"
            )
        out.append((parts[3], IMDB_LABELS.index(parts[1])))
    if not out:
        raise DataFormatError(f"{path}: no reviews in file")
    return out


_IMDB_NAME = re.compile(r"(?:^|/)aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")


def _imdb_from_dir(path: Path, split: str) -> list[tuple[str, int]]:
    out = []
    for label_id, label in enumerate(IMDB_LABELS):
        folder = path / split / label
        if not folder.is_dir():
            raise DataFormatError(f"{path}: expected the folder {folder} of the official layout")
        for f in sorted(folder.glob("*.txt")):
            out.append((f.read_text(encoding="utf-8"), label_id))
    if not out:
        raise DataFormatError(f"{path / split}: no review files (*.txt)")
    return out


def _imdb_from_tar(path: Path, split: str) -> list[tuple[str, int]]:
    out = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                m = _IMDB_NAME.search(member.name)
                if m is None or m.group(1) != split or not member.isfile():
                    continue
                text = tar.extractfile(member).read().decode("utf-8")
                out.append((text, IMDB_LABELS.index(m.group(2))))
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: not a readable aclImdb archive ({e})") from e
    if not out:
        raise DataFormatError(f"{path}: holds no aclImdb/{split}/(pos|neg)/*.txt reviews")
    return out


_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_IMDB_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]")


def imdb_tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; HTML line breaks dropped, '!' and '?' kept as tokens."""
    return _IMDB_TOKEN.findall(_BR.sub(" ", text).lower())


# ---------------------------------------------------------------------------------------------
# Tagging corpora

Sentence = tuple[list[str], ...]  # parallel columns, e.g. (words, pos, chunk) or (words, upos)

_CHUNK_TAG = re.compile(r"^(O|[BI]-\S+)$")


def load_conll2000(root: str | Path, split: str) -> list[tuple[list[str], list[str], list[str]]]:
    """CoNLL-2000 chunking sentences as ``(words, pos_tags, chunk_tags)`` (chunk tags IOB2).

    Reads ``{split}.txt[.gz]`` from ``root``, ``root/conll2000`` or ``root/tagging/conll2000``,
    or ``root`` itself when it is such a file.
    """
    root = Path(root)
    if root.is_file():
        path = root
    else:
        names = (f"{split}.txt.gz", f"{split}.txt")
        bases = (root / "tagging" / "conll2000", root / "conll2000", root)
        path = _find([b / n for b in bases for n in names], f"CoNLL-2000 {split}", CONLL2000_URL)
    sents, cur = [], ([], [], [])
    for lineno, line in _lines(path):
        if not line.strip():
            if cur[0]:
                sents.append(cur)
                cur = ([], [], [])
            continue
        parts = line.split(" ")
        if len(parts) != 3 or not _CHUNK_TAG.match(parts[2]):
            raise DataFormatError(
                f"{path}:{lineno}: expected 'WORD POS CHUNK' with an IOB chunk tag, got {line!r}"
            )
        for col, value in zip(cur, parts):
            col.append(value)
    if cur[0]:
        sents.append(cur)
    if not sents:
        raise DataFormatError(f"{path}: no sentences in file")
    return sents


def load_conllu(root: str | Path, split: str) -> list[tuple[list[str], list[str]]]:
    """UD English EWT sentences as ``(forms, upos_tags)`` over the syntactic words.

    Reads ``en_ewt-ud-{split}.conllu[.gz]`` from ``root``, ``root/UD_English-EWT``,
    ``root/ud_english_ewt`` or ``root/tagging/ud_english_ewt``, or ``root`` itself when it is a
    file. Multiword-token lines (``3-4``) and empty nodes (``8.1``) are skipped.
    """
    root = Path(root)
    if root.is_file():
        path = root
    else:
        names = (f"en_ewt-ud-{split}.conllu.gz", f"en_ewt-ud-{split}.conllu")
        bases = (
            root / "tagging" / "ud_english_ewt",
            root / "ud_english_ewt",
            root / "UD_English-EWT",
            root,
        )
        path = _find([b / n for b in bases for n in names], f"UD English EWT {split}", UD_EWT_URL)
    sents, forms, tags = [], [], []
    for lineno, line in _lines(path):
        if line.startswith("#"):
            continue
        if not line.strip():
            if forms:
                sents.append((forms, tags))
                forms, tags = [], []
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise DataFormatError(
                f"{path}:{lineno}: expected 10 TAB-separated CoNLL-U columns, got {len(cols)}"
            )
        if "-" in cols[0] or "." in cols[0]:
            continue
        if not cols[0].isdigit():
            raise DataFormatError(f"{path}:{lineno}: bad word ID {cols[0]!r}")
        forms.append(cols[1])
        tags.append(cols[3])
    if forms:
        sents.append((forms, tags))
    if not sents:
        raise DataFormatError(f"{path}: no sentences in file")
    return sents


# ---------------------------------------------------------------------------------------------
# Multi30k


def load_multi30k(
    root: str | Path, split: str, src: str = "de", tgt: str = "en"
) -> list[tuple[str, str]]:
    """Sentence pairs ``(source, target)`` of one split (``train``, ``val``, ``test_2016_flickr``).

    Reads ``{split}.{lang}[.gz]`` (the upstream raw files) from ``root``, ``root/multi30k``,
    ``root/seq2seq/multi30k`` or ``root/data/task1/raw``.
    """
    root = Path(root)
    bases = (
        root / "seq2seq" / "multi30k",
        root / "multi30k",
        root / "data" / "task1" / "raw",
        root,
    )
    sides = []
    for lang in (src, tgt):
        names = (f"{split}.{lang}.gz", f"{split}.{lang}")
        path = _find(
            [b / n for b in bases for n in names], f"Multi30k {split}.{lang}", MULTI30K_URL
        )
        lines = []
        for lineno, line in _lines(path):
            if not line.strip():
                raise DataFormatError(
                    f"{path}:{lineno}: empty line (one sentence per line expected)"
                )
            lines.append(line)
        sides.append((path, lines))
    (sp, s_lines), (tp, t_lines) = sides
    if len(s_lines) != len(t_lines):
        raise DataFormatError(
            f"{sp} has {len(s_lines)} lines but {tp} has {len(t_lines)}: the files are not parallel"
        )
    return list(zip(s_lines, t_lines))


_MT_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def mt_tokenize(text: str) -> list[str]:
    """Words and single punctuation marks; case is kept (BLEU is scored on cased text)."""
    return _MT_TOKEN.findall(text)


def mt_detokenize(tokens: Iterable[str]) -> str:
    """Inverse of :func:`mt_tokenize` up to spacing around punctuation."""
    text = " ".join(tokens)
    return re.sub(r" ([.,!?;:)])", r"\1", text).replace("( ", "(")


# ---------------------------------------------------------------------------------------------
# Vocabulary and batching

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"


class Vocab:
    """Token <-> id map. Id 0 is always ``<pad>`` and id 1 ``<unk>``."""

    def __init__(self, itos: Sequence[str]):
        if list(itos[:2]) != [PAD, UNK]:
            raise ValueError("a Vocab must start with <pad>, <unk>")
        self.itos = list(itos)
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("duplicate tokens in vocabulary")

    @classmethod
    def build(
        cls,
        sequences: Iterable[Iterable[str]],
        min_freq: int = 1,
        max_size: int | None = None,
        specials: Sequence[str] = (),
    ) -> Vocab:
        """Most frequent tokens first (ties broken alphabetically, so builds are reproducible)."""
        counts = Counter(t for seq in sequences for t in seq)
        ranked = sorted(
            (t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t)
        )
        head = [PAD, UNK, *specials]
        ranked = [t for t in ranked if t not in head]
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(head))]
        return cls(head + ranked)

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.stoi.get(t, 1) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists. Returns ``ids`` (B, T) int64 and ``lengths`` (B,) int64, T = max len."""
    if any(len(s) == 0 for s in seqs):
        raise ValueError("cannot batch an empty sequence")
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return ids, lengths


def bucket_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random | None, pool: int = 50
) -> list[list[int]]:
    """Group indices into batches of similar length to waste little padding.

    With ``rng`` the order is shuffled, then sorted by length inside pools of ``pool`` batches,
    and the batches themselves are shuffled; without ``rng`` (evaluation) indices are sorted by
    length. Every index appears exactly once.
    """
    idx = list(range(len(lengths)))
    if rng is None:
        idx.sort(key=lambda i: lengths[i])
        return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    rng.shuffle(idx)
    batches = []
    step = batch_size * pool
    for start in range(0, len(idx), step):
        chunk = sorted(idx[start : start + step], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


# ---------------------------------------------------------------------------------------------
# Reuters-21578, Distribution 1.0 (headline generation)

REUTERS_URL = (
    "https://archive.ics.uci.edu/dataset/137/reuters+21578+text+categorization+collection "
    "(reuters21578.tar.gz)"
)
REUTERS_FILES = tuple(f"reut2-{i:03d}.sgm" for i in range(22))
# The last stories of TRAIN in NEWID (roughly time) order are the dev set: TEST is later news.
REUTERS_DEV_SIZE = 600

_SGML_ATTR = re.compile(r'(\w+)="([^"]*)"')
_BLANK = re.compile(r"\s*")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


class NewsStory(NamedTuple):
    """One story: the headline (lower-cased when it was in capitals) and the text, both with
    SGML entities unescaped and control characters removed."""

    newid: int
    title: str
    body: str


def load_reuters(root: str | Path, dev_size: int = REUTERS_DEV_SIZE) -> dict[str, list[NewsStory]]:
    """The ``train``, ``dev`` and ``test`` stories of Reuters-21578 that have both a TITLE and a
    BODY, each in NEWID order.

    ``test`` is LEWISSPLIT="TEST"; ``dev`` is the last ``dev_size`` stories of
    LEWISSPLIT="TRAIN" in NEWID order and ``train`` the rest of it. ``root`` is the official
    ``reuters21578.tar.gz``, the folder of its unpacked ``.sgm`` files, or a folder holding either
    (directly, under ``summarization/`` or ``reuters21578/``). The files are read as latin-1 (one
    byte of ``reut2-017.sgm`` is not UTF-8).
    """
    by_split = {"TRAIN": [], "TEST": [], "NOT-USED": []}
    for where, text in _reuters_sources(Path(root)):
        for lewis, story in _parse_sgm(where, text):
            by_split[lewis].append(story)
    train = sorted(by_split["TRAIN"], key=lambda s: s.newid)
    test = sorted(by_split["TEST"], key=lambda s: s.newid)
    if len(train) <= dev_size or not test:
        raise DataFormatError(
            f"{root}: {len(train)} TRAIN and {len(test)} TEST stories with TITLE and BODY; "
            f"expected more than {dev_size} and at least one (the collection has "
            "12,865 and 5,458)"
        )
    return {
        "train": train[: len(train) - dev_size],
        "dev": train[len(train) - dev_size :],
        "test": test,
    }


def _reuters_sources(root: Path) -> list[tuple[str, str]]:
    """``(path shown in errors, text)`` of the 22 ``reut2-*.sgm`` files, from a tar or folder."""
    if root.is_file():
        return _reuters_from_tar(root)
    if (root / REUTERS_FILES[0]).exists():
        return _reuters_from_dir(root)
    candidates = []
    for base in (root, root / "summarization", root / "reuters21578"):
        candidates += [base / REUTERS_FILES[0], base / "reuters21578.tar.gz"]
    path = _find(candidates, "Reuters-21578", REUTERS_URL)
    return _reuters_from_dir(path.parent) if path.suffix == ".sgm" else _reuters_from_tar(path)


def _reuters_from_dir(folder: Path) -> list[tuple[str, str]]:
    missing = [n for n in REUTERS_FILES if not (folder / n).is_file()]
    if missing:
        raise DataNotFoundError(
            f"{folder}: missing {', '.join(missing)} of the 22 reut2-NNN.sgm files "
            f"(get the whole collection from {REUTERS_URL})"
        )
    return [(str(folder / n), (folder / n).read_text(encoding="latin-1")) for n in REUTERS_FILES]


def _reuters_from_tar(path: Path) -> list[tuple[str, str]]:
    found = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if name in REUTERS_FILES and member.isfile():
                    found[name] = tar.extractfile(member).read().decode("latin-1")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataFormatError(f"{path}: not a readable reuters21578 archive ({e})") from e
    missing = [n for n in REUTERS_FILES if n not in found]
    if missing:
        raise DataFormatError(
            f"{path}: the archive lacks {', '.join(missing)} of the 22 reut2-NNN.sgm files"
        )
    return [(f"{path}:{n}", found[n]) for n in REUTERS_FILES]


def _parse_sgm(where: str, text: str) -> Iterator[tuple[str, NewsStory]]:
    """``(LEWISSPLIT, story)`` for each <REUTERS> element of one file that has TITLE and BODY.

    Between elements only blank space and the ``<!DOCTYPE ...>`` line may appear; anything else,
    an unclosed element or a missing attribute stops with the file and line."""

    def fail(offset: int, expected: str) -> DataFormatError:
        got = text[offset : offset + 60].split("\n")[0]
        line = text.count("\n", 0, offset) + 1
        return DataFormatError(f"{where}:{line}: expected {expected}, got {got!r}")

    pos, n = 0, 0
    if text.startswith("<!DOCTYPE"):
        pos = text.index(">") + 1
    while True:
        start = _BLANK.match(text, pos).end()
        if start == len(text):
            break
        if not text.startswith("<REUTERS ", start):
            raise fail(start, "<REUTERS ...> (one element per story)")
        head_end = text.find(">", start)
        end = text.find("</REUTERS>", start)
        nxt = text.find("<REUTERS ", start + 1)
        if end < 0 or head_end < 0 or (0 <= nxt < end):
            raise fail(start, "this <REUTERS> element to be closed by </REUTERS>")
        pos, n = end + len("</REUTERS>"), n + 1
        attrs = dict(_SGML_ATTR.findall(text[start:head_end]))
        lewis, newid = attrs.get("LEWISSPLIT"), attrs.get("NEWID", "")
        if lewis not in ("TRAIN", "TEST", "NOT-USED") or not newid.isdigit():
            raise fail(start, '<REUTERS> with LEWISSPLIT="TRAIN|TEST|NOT-USED" and a numeric NEWID')
        title = _sgml_field(text, head_end, end, "TITLE", fail)
        body = _sgml_field(text, head_end, end, "BODY", fail)
        if title is None or body is None:
            continue
        body, title = body.strip(), title.strip()
        if body[-6:].lower() == "reuter":  # the wire's sign-off, not part of the story
            body = body[:-6].rstrip()
        if not title or not body:
            continue
        if title == title.upper():  # headlines are in capitals: read them lower-cased
            title = title.lower()
        yield lewis, NewsStory(int(newid), title, body)
    if n == 0:
        raise DataFormatError(f"{where}:1: expected <REUTERS ...> elements, found none")


def _sgml_field(text: str, start: int, end: int, tag: str, fail) -> str | None:
    """The unescaped text of ``<tag>...</tag>`` within ``text[start:end]``, or None if absent."""
    open_at = text.find(f"<{tag}>", start, end)
    if open_at < 0:
        return None
    close_at = text.find(f"</{tag}>", open_at, end)
    if close_at < 0:
        raise fail(open_at, f"</{tag}> to close <{tag}> before </REUTERS>")
    return _CONTROL.sub("", html.unescape(text[open_at + len(tag) + 2 : close_at]))


_NEWS_TOKEN = re.compile(r"\d+(?:[.,/]\d+)*|\w+(?:['.&-]\w+)*\.?|[^\w\s]")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9%)\"'][.!?])\s+(?=[A-Z\"(])")
_ABBREV = re.compile(
    r"\b(?:[A-Z]|Co|Corp|Inc|Ltd|Bhd|Mr|Mrs|Ms|Dr|St|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|"
    r"Nov|Dec|Gov|Sen|Rep|Gen|No|vs)\.$"
)


def news_lead(body: str) -> str:
    """The first sentence of a story: its first paragraph (paragraphs are indented lines),
    cut at the first full stop that ends a sentence (not an abbreviation such as 'Corp.')."""
    para = re.split(r"\n\s{2,}|\n\s*\n", body.strip(), maxsplit=1)[0]
    para = " ".join(para.split())
    for m in _SENTENCE_END.finditer(para):
        if not _ABBREV.search(para[: m.start()]):
            return para[: m.start()]
    return para


def news_tokenize(text: str) -> list[str]:
    """Lower-cased words, numbers (``5.93``, ``1,750``, ``4-5/8`` -> ``4 - 5/8``) and single
    punctuation marks; a trailing full stop stays on abbreviations like ``u.s.``"""
    toks = []
    for t in _NEWS_TOKEN.findall(text.lower()):
        if t.endswith(".") and len(t) > 1 and "." not in t[:-1] and len(t) > 2:
            toks += [t[:-1], "."]  # 'said.' -> 'said', '.'; keeps 'u.s.' and 'a.'
        else:
            toks.append(t)
    return toks
