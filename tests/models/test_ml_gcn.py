import numpy as np
import pytest
import torch

from helpers_features import make_features_npz
from pyg_mlic.data.features import FeaturesDataset
from pyg_mlic.engine import TrainConfig, Trainer, model_from_checkpoint
from pyg_mlic.errors import ClassMismatchError
from pyg_mlic.graphs import LabelGraph
from pyg_mlic.models import build_model


@pytest.fixture(scope="module")
def voc(data_dir):
    d = np.load(data_dir / "labels" / "voc2007.npz", allow_pickle=False)
    Y = (d["labels"][d["split"] == "trainval"] == 1).astype(np.uint8)
    E = np.load(data_dir / "embeddings" / "glove300_voc.npz", allow_pickle=False)
    return Y, [str(c) for c in d["classes"]], torch.from_numpy(E["vectors"])


def _model(voc, **kw):
    Y, classes, E = voc
    return build_model("ml_gcn", classes=classes, train_labels=Y, label_embeddings=E,
                       backbone="small_cnn", **kw)


def test_logits_are_generated_classifiers_times_features(voc):
    Y, classes, E = voc
    m = _model(voc).eval()
    g = LabelGraph.from_labels(Y, classes=classes, tau=0.4, p=0.2)
    P = g.propagation()
    c1, c2 = m.gcn.convs
    W = P @ torch.nn.functional.leaky_relu(P @ E @ c1.lin.weight.t(), 0.2) @ c2.lin.weight.t()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        feats = m.encoder(x)
        torch.testing.assert_close(m({"image": x}).logits, feats @ W.t(), atol=1e-4, rtol=1e-4)
    assert W.shape == (20, m.encoder.out_channels) == (20, 128)


def test_paper_defaults_and_depth(voc):
    m = _model(voc)
    # default hidden width D // 2: ML-GCN's 1024 -> 2048 for ResNet-101, 64 -> 128 here
    assert [c.out_channels for c in m.gcn.convs] == [64, 128]
    from pyg_mlic.models.ml_gcn import default_gcn_hidden
    assert default_gcn_hidden(2048) == [1024]
    assert m.gcn.act.negative_slope == 0.2
    assert m.default_train_config["lr"] == 0.01 and m.default_train_config["lr_step"] == 40
    deep = _model(voc, gcn_hidden=[1024, 1024, 1024])
    assert [c.out_channels for c in deep.gcn.convs] == [1024, 1024, 1024, 128]


def test_classifiers_once_per_forward_and_cached_in_eval(voc):
    m = _model(voc, gcn_hidden=[64])
    calls = []
    m.gcn.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(8, 3, 64, 64)
    m.train()
    m({"image": x})
    assert len(calls) == 1  # one generation for 8 images
    m.eval()
    with torch.no_grad():
        a = m({"image": x}).logits
        b = m({"image": x}).logits
    assert len(calls) == 2 and torch.equal(a, b)  # second eval call used the cache
    with torch.no_grad():  # a parameter change invalidates the cache
        m.gcn.convs[0].lin.weight.add_(0.1)
        c = m({"image": x}).logits
    assert len(calls) == 3 and not torch.allclose(a, c)
    m.train()
    assert m._cache is None


def test_class_mismatch_errors_name_both(voc):
    Y, classes, E = voc
    with pytest.raises(ClassMismatchError, match=r"\[20, d\]"):
        build_model("ml_gcn", classes=classes, train_labels=Y, label_embeddings=E[:19],
                    backbone="small_cnn")
    g = LabelGraph.from_labels(Y, classes=classes[::-1][:20])
    with pytest.raises(ClassMismatchError, match="label graph"):
        build_model("ml_gcn", classes=classes, label_graph=g, backbone="small_cnn")
    with pytest.raises(ValueError, match="train_labels"):
        build_model("ml_gcn", classes=classes, backbone="small_cnn")


def test_features_training_checkpoint_and_export(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from pyg_mlic.export import export_model

    tr = FeaturesDataset(make_features_npz(tmp_path / "a.npz"), split="train")
    te = FeaturesDataset(make_features_npz(tmp_path / "b.npz", n=60, seed=1), split="test")
    m = build_model("ml_gcn", classes=tr.classes, input_kind="features",
                    in_features=tr.feature_dim, train_labels=tr.labels, gcn_hidden=[32],
                    encoder_hidden=[32], encoder_out=32)
    cfg = TrainConfig(epochs=3, optimizer="adam", lr=1e-2, lr_step=None, progress=False)
    res = Trainer(m, tr, None, te, cfg, out_dir=tmp_path / "run").fit()
    assert res["mAP"] > 0.6
    re = model_from_checkpoint(tmp_path / "run" / "last.pt").eval()
    m.eval()
    x = torch.from_numpy(np.load(tmp_path / "b.npz")["features"][:9])
    with torch.no_grad():
        ref = m({"features": x}).logits
        torch.testing.assert_close(re({"features": x}).logits, ref)
    import warnings

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        path = export_model(re, tmp_path / "m.onnx", "onnx")
        ts_path = export_model(re, tmp_path / "m.ts", "torchscript")
    # the input-shape checks are constants of the trace: no TracerWarning reaches the user
    assert not [w for w in rec if issubclass(w.category, torch.jit.TracerWarning)]
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-4, rtol=1e-4)
    ts = torch.jit.load(str(ts_path))
    torch.testing.assert_close(ts(x), ref, atol=1e-5, rtol=1e-5)
    # a batch size other than the example's: the trace's shape checks hold for any batch
    x2 = torch.from_numpy(np.load(tmp_path / "b.npz")["features"][:4])
    with torch.no_grad():
        torch.testing.assert_close(ts(x2), re({"features": x2}).logits, atol=1e-5, rtol=1e-5)


def test_image_model_exports_to_onnx(voc, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from pyg_mlic.export import export_model

    m = _model(voc, gcn_hidden=[64]).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m({"image": x}).logits
    path = export_model(m, tmp_path / "img.onnx", "onnx", image_size=64)
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x.numpy()})[0], ref.numpy(),
                               atol=1e-4, rtol=1e-4)
