"""The label-graph file (``LabelGraph.save`` / ``LabelGraph.load``) and its use by
``fit(..., label_graph=...)``: a plain ``.npz`` (no pickle) holding the statistics, the
operator settings, the split, the class names and optionally the label embeddings."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from pyg_mlic.errors import ClassMismatchError, DatasetError, OptionError
from pyg_mlic.graphs import LabelGraph

CLASSES = ["person", "dog", "frisbee", "car"]
Y = np.array([[1, 1, 0, 0], [1, 0, 0, 1], [1, 1, 1, 0], [0, 1, 1, 0], [1, 0, 0, 0]],
             dtype=np.uint8)


def _graph(**kw) -> LabelGraph:
    return LabelGraph.from_labels(Y, classes=CLASSES, split="train2014", **kw)


def _same(a: LabelGraph, b: LabelGraph) -> None:
    assert a.classes == b.classes and a.split == b.split
    assert (a.tau, a.p, a.scheme, a.convention) == (b.tau, b.p, b.scheme, b.convention)
    assert torch.equal(a.counts, b.counts) and torch.equal(a.nums, b.nums)
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.edge_weight, b.edge_weight)
    assert torch.equal(a.propagation(), b.propagation())
    assert (a.x is None) == (b.x is None)
    if a.x is not None:
        assert torch.equal(a.x, b.x)
    assert a.content_hash() == b.content_hash()


# ----------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("scheme,convention,tau,p", [
    ("reweighted", "paper", 0.4, 0.2), ("reweighted", "mlgcn_code", 0.3, 0.25),
    ("binary", "paper", 0.5, 0.2), ("probability", "mlgcn_code", 0.0, 0.2)])
def test_round_trip_equals_the_saved_graph(tmp_path, scheme, convention, tau, p):
    g = _graph(tau=tau, p=p, scheme=scheme, convention=convention)
    path = g.save(tmp_path / "g.npz", source="hand labels")
    h = LabelGraph.load(path)
    _same(g, h)
    assert h.data.source == "hand labels"
    assert h.file_info["path"] == str(path) and len(h.file_info["sha256"]) == 64


def test_round_trip_of_partial_label_statistics(tmp_path):
    """Statistics of partially known labels: ``nums`` is the per-pair ``[C, C]`` matrix."""
    import inspect

    if "mask" not in inspect.signature(LabelGraph.from_labels).parameters:
        pytest.skip("LabelGraph.from_labels takes no known-mask")
    known = np.ones_like(Y, dtype=bool)
    known[0, 2] = known[3, 0] = False
    g = _graph(tau=0.3, mask=known)
    assert g.nums.shape == (4, 4)
    _same(g, LabelGraph.load(g.save(tmp_path / "partial.npz")))


def test_file_is_plain_npz_readable_without_pickle(tmp_path):
    E = np.random.default_rng(0).normal(size=(4, 7)).astype(np.float32)
    g = _graph(tau=0.3).with_embeddings(E, spec="glove")
    g.save(tmp_path / "g.npz", source="coco:instances_train2014.json")
    with np.load(tmp_path / "g.npz", allow_pickle=False) as z:
        files = set(z.files)
        assert {"format", "format_version", "classes", "counts", "nums", "tau", "p", "scheme",
                "convention", "split", "source", "propagation", "vectors",
                "embeddings_spec"} <= files
        arrays = {k: z[k] for k in z.files}  # every array loads with allow_pickle=False
    assert all(a.dtype != object for a in arrays.values())
    assert arrays["classes"].tolist() == CLASSES and arrays["classes"].dtype.kind == "U"
    assert str(arrays["split"]) == "train2014" and str(arrays["embeddings_spec"]) == "glove"
    assert arrays["counts"].dtype == np.int64 and arrays["nums"].dtype == np.int64
    np.testing.assert_array_equal(arrays["counts"], g.counts.numpy())
    np.testing.assert_array_equal(arrays["propagation"], g.propagation().numpy())
    np.testing.assert_array_equal(arrays["vectors"], E)
    assert float(arrays["tau"]) == 0.3 and int(arrays["format_version"]) == 1
    # the zip holds .npy members only (nothing to unpickle)
    with zipfile.ZipFile(tmp_path / "g.npz") as zf:
        assert all(n.endswith(".npy") for n in zf.namelist())
    h = LabelGraph.load(tmp_path / "g.npz")
    _same(g, h)
    assert h.data.embeddings_spec == "glove"


def test_graph_file_is_an_npz_embeddings_file(tmp_path):
    """``classes`` + ``vectors``: the layout of the ``npz:PATH`` embeddings spec."""
    from pyg_mlic.embeddings import load_label_embeddings

    E = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    _graph().with_embeddings(E).save(tmp_path / "g.npz")
    got = load_label_embeddings(f"npz:{tmp_path / 'g.npz'}", ["frisbee", "person"])
    assert torch.equal(torch.as_tensor(got), E[[2, 0]])


def test_content_hash_ignores_file_bytes_but_not_content(tmp_path):
    g = _graph()
    a, b = LabelGraph.load(g.save(tmp_path / "a.npz")), LabelGraph.load(
        g.save(tmp_path / "b.npz", compress=True))
    assert a.content_hash() == b.content_hash() == g.content_hash()
    assert a.file_info["sha256"] != b.file_info["sha256"]
    assert _graph(tau=0.5).content_hash() != g.content_hash()
    assert g.with_embeddings(np.ones((4, 2))).content_hash() != g.content_hash()
    d = LabelGraph.load(tmp_path / "a.npz").describe()
    assert d["path"] == str(tmp_path / "a.npz") and d["split"] == "train2014"
    assert d["content_hash"] == g.content_hash() and d["embeddings"] is None


def test_real_coco_statistics_survive_the_file(data_dir, tmp_path):
    """COCO train2014 labels -> file -> load: the ML-GCN release's counts exactly."""
    with np.load(data_dir / "labels" / "coco2014.npz", allow_pickle=False) as d:
        Yc = d["labels"][d["split"] == "train2014"]
        classes = d["classes"].tolist()
    with np.load(data_dir / "reference" / "mlgcn_coco_adj.npz", allow_pickle=False) as r:
        adj, nums = r["adj"], r["nums"]
    with np.load(data_dir / "embeddings" / "glove300_coco.npz", allow_pickle=False) as e:
        assert e["classes"].tolist() == classes
        E = e["vectors"]
    g = LabelGraph.from_labels(Yc, embeddings=E, classes=classes, split="train2014")
    h = LabelGraph.load(g.save(tmp_path / "coco.npz"))
    np.testing.assert_array_equal(h.counts.numpy(), adj)
    np.testing.assert_array_equal(h.nums.numpy(), nums)
    _same(g, h)
    assert h.x.shape == (80, 300)


# ----------------------------------------------------------------------------- bad files

def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _save_arrays(path, **arrays):
    np.savez(path, **arrays)
    return path


def _valid_arrays(tmp_path):
    with np.load(_graph().save(tmp_path / "ok.npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_missing_file_and_wrong_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="label graph file not found"):
        LabelGraph.load(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match=r"\.npz"):
        _graph().save(tmp_path / "g.pt")


def test_pickle_and_torch_files_are_refused_not_unpickled(tmp_path):
    g = _graph()
    torch.save(g.data.to_dict(), tmp_path / "new.pt")  # zip archive with data.pkl
    with pytest.raises(DatasetError, match="torch.save archive") as e:
        LabelGraph.load(tmp_path / "new.pt")
    assert "new.pt" in _one_line(e)
    torch.save(g.data.to_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(DatasetError, match="pickle") as e:
        LabelGraph.load(tmp_path / "old.pt")
    _one_line(e)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="not a label-graph .npz"):
        LabelGraph.load(tmp_path / "obj.npy")
    arrays = _valid_arrays(tmp_path)
    arrays["source"] = np.array([{"code": 1}], dtype=object)
    _save_arrays(tmp_path / "objkey.npz", **arrays)
    with pytest.raises(DatasetError, match="'source' cannot be read without unpickling"):
        LabelGraph.load(tmp_path / "objkey.npz")


def test_other_npz_and_garbage_are_refused(tmp_path, data_dir):
    with pytest.raises(DatasetError, match="not a pyg_mlic label-graph file") as e:
        LabelGraph.load(data_dir / "reference" / "mlgcn_voc_adj.npz")
    assert "adj" in _one_line(e)
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip file at all")
    with pytest.raises(DatasetError, match="junk.npz"):
        LabelGraph.load(tmp_path / "junk.npz")


def test_missing_keys_wrong_shapes_and_newer_version(tmp_path):
    ok = _valid_arrays(tmp_path)
    bad = {k: v for k, v in ok.items() if k not in ("counts", "split")}
    with pytest.raises(DatasetError, match=r"missing keys \['counts', 'split'\]") as e:
        LabelGraph.load(_save_arrays(tmp_path / "a.npz", **bad))
    _one_line(e)
    with pytest.raises(DatasetError, match=r"'counts' must be \[C, C\] = \[4, 4\]"):
        LabelGraph.load(_save_arrays(tmp_path / "b.npz", **{**ok, "counts": ok["counts"][:3]}))
    with pytest.raises(DatasetError, match=r"nums must be a vector \[C\]"):
        LabelGraph.load(_save_arrays(tmp_path / "c.npz", **{**ok, "nums": ok["nums"][:2]}))
    with pytest.raises(DatasetError, match="integer counts"):
        LabelGraph.load(_save_arrays(tmp_path / "d.npz", **{**ok, "counts": ok["counts"] + .5}))
    with pytest.raises(DatasetError, match=r"'vectors' must be a numeric \[C, d\]"):
        LabelGraph.load(_save_arrays(tmp_path / "e.npz", **{**ok, "vectors": np.ones((3, 2))}))
    with pytest.raises(DatasetError, match="format version 2 is newer") as e:
        LabelGraph.load(_save_arrays(tmp_path / "f.npz", **{**ok, "format_version":
                                                            np.array(2)}))
    assert "upgrade pyg_mlic" in _one_line(e)
    with pytest.raises(DatasetError, match="'classes' must be a 1-D string array"):
        LabelGraph.load(_save_arrays(tmp_path / "g.npz", **{**ok, "classes": np.arange(4)}))
    with pytest.raises(DatasetError, match="unknown scheme 'nope'"):
        LabelGraph.load(_save_arrays(tmp_path / "h.npz", **{**ok, "scheme": np.array("nope")}))
    with pytest.raises(DatasetError, match="tau must be in"):
        LabelGraph.load(_save_arrays(tmp_path / "i.npz", **{**ok, "tau": np.array(1.5)}))
    asym = ok["counts"].copy()
    asym[0, 1] += 1
    with pytest.raises(DatasetError, match="symmetric"):
        LabelGraph.load(_save_arrays(tmp_path / "j.npz", **{**ok, "counts": asym}))


def test_tampered_propagation_is_detected(tmp_path):
    ok = _valid_arrays(tmp_path)
    P = ok["propagation"].copy()
    P[0, 0] += 0.01
    with pytest.raises(DatasetError, match="stored 'propagation' differs") as e:
        LabelGraph.load(_save_arrays(tmp_path / "t.npz", **{**ok, "propagation": P}))
    _one_line(e)
    # without a propagation key (a hand-made file) the operator is rebuilt, unchecked
    g = LabelGraph.load(_save_arrays(tmp_path / "n.npz", **{k: v for k, v in ok.items()
                                                            if k != "propagation"}))
    np.testing.assert_array_equal(g.propagation().numpy(), ok["propagation"])


# ----------------------------------------------------------------------------- fit

@pytest.fixture
def features(tmp_path):
    from helpers_features import make_features_npz

    from pyg_mlic.data.features import FeaturesDataset

    tr = FeaturesDataset(make_features_npz(tmp_path / "tr.npz", n=60, c=4, seed=0), split="train")
    te = FeaturesDataset(make_features_npz(tmp_path / "te.npz", n=30, c=4, seed=1), split="test")
    return tr, te


def _file_for(classes, tmp_path, name="g.npz", embeddings=None, **kw):
    """A graph whose statistics differ from any the training labels would give."""
    Yf = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=np.uint8)
    g = LabelGraph.from_labels(Yf, classes=classes, split="mine", **kw)
    if embeddings is not None:
        g = g.with_embeddings(embeddings, spec="test vectors")
    return g.save(tmp_path / name, source="test")


def _dense(edge_index, edge_weight, C):
    P = torch.zeros(C, C)
    P.index_put_((edge_index[1], edge_index[0]), edge_weight.float(), accumulate=True)
    return P


@pytest.mark.parametrize("model", ["ml_gcn", "ia_gcn"])
def test_fit_uses_the_files_graph_and_embeddings(features, tmp_path, model):
    from pyg_mlic.engine import fit

    tr, te = features
    E = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
    path = _file_for(tr.classes, tmp_path, embeddings=E, tau=0.6)
    opts = {"encoder_out": 8, "gcn_hidden": [8]}
    if model == "ia_gcn":
        opts.update(id_lcm=False, com_sco=False, var_inf=False)  # no ROIs: ML-GCN's path
    m = fit(model, tr, None, te, model_options=opts, label_graph=str(path),
            train_options={"epochs": 1, "optimizer": "adam", "progress": False},
            out_dir=tmp_path / "run")
    rec = m["settings"]["label_graph"]
    assert rec["path"] == str(path) and rec["split"] == "mine" and rec["tau"] == 0.6
    assert rec["sha256"] == LabelGraph.load(path).file_info["sha256"]
    assert m["settings"]["label_embeddings"] == "label graph (test vectors)"
    from pyg_mlic.engine import load_checkpoint, model_from_checkpoint

    net = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))
    with np.load(path, allow_pickle=False) as z:
        P_file = torch.from_numpy(z["propagation"])
    assert torch.equal(_dense(net.edge_index, net.edge_weight, 4), P_file)
    counted = LabelGraph.from_labels(tr.labels, classes=tr.classes).propagation()
    assert not torch.equal(counted, P_file)  # the file's graph, not the training labels'
    assert torch.equal(net.label_embeddings, torch.from_numpy(E))


def test_gm_mlic_takes_the_files_support(tmp_path):
    from pyg_mlic.models import build_model

    classes = ["a", "b", "c", "d"]
    g = LabelGraph.load(_file_for(classes, tmp_path, tau=0.6))
    net = build_model("gm_mlic", classes=classes, input_kind="features", in_features=8,
                      roi_feature_dim=8, beta=0.0, label_graph=g)
    P = g.propagation()
    P.fill_diagonal_(0)
    expected = {(int(j), int(i)) for i, j in (P != 0).nonzero()}
    assert {tuple(e) for e in net.label_edge_index.t().tolist()} == expected
    assert len(expected) < 12  # not the complete graph


def test_fit_label_graph_errors(features, tmp_path):
    from pyg_mlic.engine import check_fit_options, fit

    tr, te = features
    path = _file_for(tr.classes, tmp_path, tau=0.6)
    quick = {"epochs": 1, "progress": False}
    for name in ("baseline", "asl"):
        with pytest.raises(OptionError, match=rf"{name} takes no label graph.*ml_gcn") as e:
            check_fit_options(name, label_graph=path)
        _one_line(e)
    with pytest.raises(OptionError, match="a_gcn takes no label graph.*npz:FILE"):
        fit("a_gcn", tr, None, te, label_graph=path, train_options=quick)
    other = _file_for(["class_0", "class_2", "class_1", "class_3"], tmp_path, "o.npz")
    with pytest.raises(ClassMismatchError, match=r"first difference at position 1: 'class_2' "
                                                 r"vs 'class_1'") as e:
        fit("ml_gcn", tr, None, te, label_graph=other, train_options=quick)
    assert "o.npz" in _one_line(e)
    with pytest.raises(OptionError, match=r"tau=0.3 contradicts the label graph .*tau=0.6"):
        fit("ml_gcn", tr, None, te, model_options={"tau": 0.3}, label_graph=path,
            train_options=quick)
    with pytest.raises(TypeError, match="label_graph must be"):
        fit("ml_gcn", tr, None, te, label_graph=np.eye(4), train_options=quick)
    bad = tmp_path / "bad.npz"
    torch.save({"x": 1}, bad)
    with pytest.raises(DatasetError, match="torch.save archive"):
        fit("ml_gcn", tr, None, te, label_graph=bad, train_options=quick)


def test_two_stage_iml_gcn_takes_the_graph_and_keeps_its_embeddings(features, tmp_path):
    from pyg_mlic.engine import fit, load_checkpoint, model_from_checkpoint

    tr, te = features
    path = _file_for(tr.classes, tmp_path, embeddings=np.ones((4, 3)), tau=0.6)
    with pytest.warns(UserWarning, match="label graph's own embeddings are not used"):
        m = fit("iml_gcn", tr, None, te, model_options={"encoder_out": 8, "n_components": 3},
                label_graph=path, out_dir=tmp_path / "iml",
                train_options={"epochs": 1, "progress": False})
    assert m["settings"]["label_graph"]["path"] == str(path)
    net = model_from_checkpoint(load_checkpoint(tmp_path / "iml" / "last.pt"))
    with np.load(path, allow_pickle=False) as z:
        assert torch.equal(_dense(net.edge_index, net.edge_weight, 4),
                           torch.from_numpy(z["propagation"]))
    assert net.label_embeddings.shape == (4, 3)  # F_PCA from stage 1, not the file's ones
    assert not torch.equal(net.label_embeddings, torch.ones(4, 3))
