"""benchmarks/mulan.py: MULAN ARFF + XML label files -> features ``.npz`` (train / val /
test). Small ARFF files written in the MULAN layout (dense rows with quoted names and a
nominal attribute, sparse rows) round-trip through ``load_features``; malformed files get
a one-line error naming the file and line."""
from pathlib import Path

import numpy as np
import pytest

from helpers_bench import import_benchmarks


XML = """<?xml version="1.0" encoding="utf-8"?>
<labels xmlns="http://mulan.sourceforge.net/labels">
<label name="Brown Creeper"></label>
<label name="wren"></label>
</labels>
"""

HEADER = """@relation 'toy set'
% a comment
@attribute f1 numeric
@attribute colour {red,green,'dark blue'}
@attribute flag {0,1}
@attribute 'Brown Creeper' {0,1}
@attribute wren {0,1}
@attribute f2 REAL

@data
"""


@pytest.fixture()
def mulan():
    return import_benchmarks("mulan")[0]


def _write_set(folder: Path, train_rows, test_rows, name="toy"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.xml").write_text(XML)
    (folder / f"{name}-train.arff").write_text(HEADER + "\n".join(train_rows) + "\n")
    (folder / f"{name}-test.arff").write_text(HEADER + "\n".join(test_rows) + "\n")
    return folder


def test_dense_and_sparse_rows_round_trip(mulan, tmp_path):
    from pyg_mlic.data import load_features

    train = [f"{i * 0.5},{['red', 'green', chr(39) + 'dark blue' + chr(39)][i % 3]},"
             f"{i % 2},{int(i % 3 == 0)},{int(i % 2 == 0)},{-i}" for i in range(10)]
    # sparse: index value; absent entries are 0 / the first nominal value
    test = ["{0 2.5,1 green,3 1,5 7}", "{}", "1.0,red,1,0,1,3"]
    folder = _write_set(tmp_path / "toy", train, test)
    paths = mulan.convert(folder, tmp_path / "out", val_fraction=0.2, seed=0)
    assert sorted(paths) == ["test", "train", "val"]
    tr, va, te = (load_features(paths[k]) for k in ("train", "val", "test"))
    assert list(tr["classes"]) == ["Brown Creeper", "wren"]
    assert len(tr["labels"]) == 8 and len(va["labels"]) == 2 and len(te["labels"]) == 3
    # columns: f1, colour one-hot (3), flag, f2
    assert tr["features"].shape[1] == 6
    X = np.concatenate([tr["features"], va["features"]])
    Y = np.concatenate([tr["labels"], va["labels"]])
    order = np.argsort(X[:, 0])  # f1 = i / 2 identifies the row
    X, Y = X[order], Y[order]
    i = np.arange(10)
    np.testing.assert_allclose(X[:, 0], i * 0.5)
    np.testing.assert_array_equal(X[:, 1:4].argmax(1), i % 3)
    np.testing.assert_array_equal(X[:, 1:4].sum(1), 1)
    np.testing.assert_array_equal(X[:, 4], i % 2)
    np.testing.assert_allclose(X[:, 5], -i)
    np.testing.assert_array_equal(Y, np.stack([i % 3 == 0, i % 2 == 0], 1))
    np.testing.assert_allclose(te["features"], [[2.5, 0, 1, 0, 0, 7], [0, 1, 0, 0, 0, 0],
                                               [1.0, 1, 0, 0, 1, 3]])
    np.testing.assert_array_equal(te["labels"], [[1, 0], [0, 0], [0, 1]])


@pytest.mark.parametrize("row, match", [
    ("1.0,red,1,0,?,2", r"missing value"),
    ("1.0,red,1,0,1", r"5 values for 6 attributes"),
    ("1.0,purple,1,0,1,2", r"'purple' is not one of"),
    ("abc,red,1,0,1,2", r"'abc' is not a number"),
    ("{9 1}", r"bad sparse entry"),
])
def test_bad_rows_name_file_and_line(mulan, tmp_path, row, match):
    folder = _write_set(tmp_path / "bad", ["1.0,red,1,0,1,2"] * 5 + [row],
                        ["1.0,red,1,0,1,2"])
    with pytest.raises(ValueError, match=match) as e:
        mulan.convert(folder, tmp_path / "out")
    assert "toy-train.arff:16" in str(e.value)
    assert not (tmp_path / "out" / "train.npz").exists()


def test_bad_set_folders(mulan, tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        mulan.find_set(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="one NAME-train.arff"):
        mulan.find_set(tmp_path / "empty")
    folder = _write_set(tmp_path / "x", ["1,red,1,0,1,2"] * 5, ["1,red,1,0,1,2"])
    (folder / "toy.xml").write_text(XML.replace("wren", "robin"))
    with pytest.raises(ValueError, match=r"\['robin'\] are not in the file"):
        mulan.convert(folder, tmp_path / "out")
    (folder / "toy.xml").write_text("<labels></labels>")
    with pytest.raises(ValueError, match="no <label"):
        mulan.convert(folder, tmp_path / "out")
    with pytest.raises(ValueError, match="val_fraction"):
        mulan.convert(folder, tmp_path / "out", val_fraction=1.0)
