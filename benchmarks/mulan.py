"""MULAN multi-label ARFF sets -> the features ``.npz`` of ``--dataset features``.

The MULAN repository (``tsoumakas/mulan``, ``data/multi-label/NAME/``) ships the standard
tabular multi-label benchmarks (*scene*, *yeast*, *emotions*, *birds*, ...) as Weka ARFF
files with an official train / test split and an XML file naming the label attributes.
They are real feature sets the features path of the engine was never tuned on, which is
what ``benchmarks/compare_features.py --mulan DIR`` uses them for.

Conversion (:func:`convert`):

- numeric attributes are kept as they are; a nominal attribute that is not a label becomes
  one 0/1 column per value (a ``{0,1}`` attribute stays one column); string and date
  attributes and missing values (``?``) are refused with the file and line;
- dense and sparse (``{index value, ...}``) data rows are both read;
- the labels are the attributes named in ``NAME.xml`` (hierarchical XML label files are
  flattened: every ``label`` element counts);
- ``val_fraction`` of the official training rows (seeded) become the validation split, so
  that ``train``, ``val`` and ``test`` are written; the test split is the official one.

Run: ``python benchmarks/mulan.py DIR OUT [--val-fraction 0.2] [--seed 0]``, where
``DIR`` holds ``NAME-train.arff``, ``NAME-test.arff`` and ``NAME.xml``; it writes
``OUT/{train,val,test}.npz``.
"""
from __future__ import annotations

import argparse
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["read_arff", "label_names", "load_mulan", "convert", "find_set"]

_ATTR = re.compile(r"@attribute\s+('(?:[^'\\]|\\.)+'|\"(?:[^\"\\]|\\.)+\"|\S+)\s+(.+)$",
                   re.IGNORECASE)


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        s = re.sub(r"\\(.)", r"\1", s[1:-1])
    return s


def _split_values(s: str) -> List[str]:
    """Comma-separated ARFF values, honouring single and double quotes."""
    out, cur, quote, esc = [], [], None, False
    for ch in s:
        if esc:
            cur.append(ch)
            esc = False
        elif ch == "\\" and quote:
            esc = True
        elif quote:
            if ch == quote:
                quote = None
            else:
                cur.append(ch)
        elif ch in "'\"":
            quote = ch
        elif ch == ",":
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return out


def read_arff(path) -> Tuple[List[str], List[object], np.ndarray]:
    """``(names, types, values)`` of an ARFF file: ``types[j]`` is ``"numeric"`` or the
    list of a nominal attribute's values; ``values`` is an ``[N, A]`` float array where a
    nominal entry is the index of its value. Raises ``ValueError`` naming the file and
    line on anything it cannot read."""
    path = Path(path)
    names: List[str] = []
    types: List[object] = []
    rows: List[np.ndarray] = []
    in_data = False
    with open(path, encoding="utf-8", errors="strict") as f:
        for ln, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("%"):
                continue
            where = f"{path}:{ln}"
            if not in_data:
                low = line.lower()
                if low.startswith("@relation"):
                    continue
                if low.startswith("@data"):
                    if not names:
                        raise ValueError(f"{where}: @data before any @attribute")
                    in_data = True
                    continue
                m = _ATTR.match(line)
                if m is None:
                    raise ValueError(f"{where}: not an ARFF header line: {line[:80]!r}")
                name, spec = _unquote(m.group(1)), m.group(2).strip()
                if spec.startswith("{"):
                    if not spec.endswith("}"):
                        raise ValueError(f"{where}: unterminated nominal values of {name!r}")
                    types.append([_unquote(v) for v in _split_values(spec[1:-1])])
                elif spec.lower() in ("numeric", "real", "integer"):
                    types.append("numeric")
                else:
                    raise ValueError(f"{where}: attribute {name!r} is {spec.split()[0]!r}; "
                                     f"only numeric and nominal attributes are supported")
                names.append(name)
                continue
            row = np.zeros(len(names), dtype=np.float64)
            if line.startswith("{"):  # sparse: {index value, ...}; absent = 0
                if not line.endswith("}"):
                    raise ValueError(f"{where}: unterminated sparse row")
                body = line[1:-1].strip()
                items = _split_values(body) if body else []
                pairs = []
                for it in items:
                    parts = it.split(None, 1)
                    if len(parts) != 2 or not parts[0].isdigit() or \
                            int(parts[0]) >= len(names):
                        raise ValueError(f"{where}: bad sparse entry {it!r}")
                    pairs.append((int(parts[0]), parts[1]))
                # a sparse row's absent nominal entries are the value at index 0
            else:
                vals = _split_values(line)
                if len(vals) != len(names):
                    raise ValueError(f"{where}: {len(vals)} values for {len(names)} "
                                     f"attributes")
                pairs = list(enumerate(vals))
            for j, v in pairs:
                v = _unquote(v)
                if v == "?":
                    raise ValueError(f"{where}: missing value ('?') in attribute "
                                     f"{names[j]!r}; fill or drop it first")
                t = types[j]
                if t == "numeric":
                    try:
                        row[j] = float(v)
                    except ValueError:
                        raise ValueError(f"{where}: attribute {names[j]!r}: {v!r} is not "
                                         f"a number") from None
                else:
                    if v not in t:
                        raise ValueError(f"{where}: attribute {names[j]!r}: {v!r} is not "
                                         f"one of {t}")
                    row[j] = t.index(v)
            if not np.all(np.isfinite(row)):
                raise ValueError(f"{where}: non-finite value")
            rows.append(row)
    if not in_data:
        raise ValueError(f"{path}: no @data section (not an ARFF file?)")
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return names, types, np.stack(rows)


def label_names(xml_path) -> List[str]:
    """The label attribute names of a MULAN XML label file, in file order."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{xml_path}: not a MULAN label file ({e})") from None
    out = [el.get("name") for el in root.iter() if el.tag.split("}")[-1] == "label"]
    if not out or any(n is None for n in out):
        raise ValueError(f"{xml_path}: no <label name=...> elements")
    if len(set(out)) != len(out):
        raise ValueError(f"{xml_path}: duplicate label names")
    return out


def load_mulan(arff, labels: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """``(X [N, D] float32, Y [N, C] uint8, feature_names)`` of one ARFF file whose label
    attributes are ``labels`` (each must be a ``{0,1}`` nominal attribute)."""
    names, types, values = read_arff(arff)
    index = {n: j for j, n in enumerate(names)}
    missing = [n for n in labels if n not in index]
    if missing:
        raise ValueError(f"{arff}: label attributes {missing[:5]} are not in the file")
    ycols = []
    for n in labels:
        t = types[index[n]]
        if t == "numeric" or sorted(t) != ["0", "1"]:
            raise ValueError(f"{arff}: label attribute {n!r} is not {{0,1}}")
        ycols.append(np.asarray([t[int(k)] == "1" for k in values[:, index[n]]]))
    Y = np.stack(ycols, 1).astype(np.uint8)
    lab = set(labels)
    cols, fnames = [], []
    for j, (n, t) in enumerate(zip(names, types)):
        if n in lab:
            continue
        if t == "numeric":
            cols.append(values[:, j])
            fnames.append(n)
        elif sorted(t) == ["0", "1"]:
            cols.append(np.asarray([t[int(k)] == "1" for k in values[:, j]], dtype=float))
            fnames.append(n)
        else:  # one-hot
            for k, v in enumerate(t):
                cols.append((values[:, j] == k).astype(float))
                fnames.append(f"{n}={v}")
    if not cols:
        raise ValueError(f"{arff}: no feature attributes besides the labels")
    return np.stack(cols, 1).astype(np.float32), Y, fnames


def find_set(folder) -> Tuple[Path, Path, Path]:
    """``(train.arff, test.arff, labels.xml)`` of a MULAN set folder ``DIR`` holding
    ``NAME-train.arff``, ``NAME-test.arff`` and ``NAME.xml``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    trains = sorted(folder.glob("*-train.arff"))
    if len(trains) != 1:
        raise ValueError(f"{folder}: expected one NAME-train.arff, found "
                         f"{[p.name for p in trains]}")
    name = trains[0].name[:-len("-train.arff")]
    test, xml = folder / f"{name}-test.arff", folder / f"{name}.xml"
    for p in (test, xml):
        if not p.is_file():
            raise ValueError(f"{folder}: {p.name} is missing")
    return trains[0], test, xml


def convert(folder, out_dir, val_fraction: float = 0.2, seed: int = 0) -> Dict[str, Path]:
    """Write ``out_dir/{train,val,test}.npz`` from a MULAN set folder (see the module
    docstring); returns the three paths."""
    from pyg_mlic.data import save_features

    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train_arff, test_arff, xml = find_set(folder)
    labels = label_names(xml)
    Xtr, Ytr, fn_tr = load_mulan(train_arff, labels)
    Xte, Yte, fn_te = load_mulan(test_arff, labels)
    if fn_tr != fn_te:
        raise ValueError(f"{folder}: the train and test files have different attributes")
    rng = np.random.default_rng(int(seed))
    perm = rng.permutation(len(Xtr))
    n_val = int(round(len(Xtr) * float(val_fraction)))
    if n_val < 1 or n_val >= len(Xtr):
        raise ValueError(f"{train_arff}: {len(Xtr)} rows cannot give a validation split of "
                         f"{val_fraction}")
    val_idx, tr_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = {"train": (Xtr[tr_idx], Ytr[tr_idx]), "val": (Xtr[val_idx], Ytr[val_idx]),
             "test": (Xte, Yte)}
    return {k: save_features(out_dir / f"{k}.npz", X, Y, labels, split=[k] * len(X))
            for k, (X, Y) in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="MULAN set folder (NAME-train.arff, NAME-test.arff, "
                                   "NAME.xml)")
    ap.add_argument("out", help="output folder for train.npz, val.npz, test.npz")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    try:
        paths = convert(a.folder, a.out, a.val_fraction, a.seed)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    for k, p in paths.items():
        print(f"{k}: {p}")


if __name__ == "__main__":
    main()
