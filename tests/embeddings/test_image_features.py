"""IML-GCN image-feature label embeddings (Eqs. 5-6) on real BCCD images and on
feature files: equality with a direct per-label mean, PCA, cache, resume, missing labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pyg_mlic.backbones import ImageEncoder, MLPEncoder, build_backbone
from pyg_mlic.data.base import SubsetDataset
from pyg_mlic.data.features import FeaturesDataset
from pyg_mlic.data.transforms import ResizeTransform
from pyg_mlic.embeddings import load_label_embeddings
from pyg_mlic.embeddings.image_features import (image_feature_embeddings, label_feature_means,
                                                pca_embeddings)
from pyg_mlic.errors import DatasetError

BCCD = ["WBC", "RBC", "Platelets"]


@pytest.fixture(scope="module")
def bccd(data_dir: Path):
    from pyg_mlic.data.voc import VOCDataset

    root = data_dir / "images" / "bccd"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    full = VOCDataset(root, split="val", classes=BCCD, transform=ResizeTransform(32))
    return SubsetDataset(full, np.arange(10), split="val-first10")


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    # max pooling on purpose: the embeddings must use F_GAP of the feature map anyway
    return ImageEncoder(build_backbone("small_cnn"), pool="max").eval()


def _direct_means(encoder, ds):
    feats = []
    with torch.no_grad():
        for i in range(len(ds)):
            x = ds[i]["image"].unsqueeze(0)
            feats.append(encoder.backbone(x).mean(dim=(2, 3))[0].double())
    F = torch.stack(feats)
    Y = torch.as_tensor(ds.labels, dtype=torch.float64)
    if ds.label_mask is not None:
        Y = Y * torch.as_tensor(ds.label_mask, dtype=torch.float64)
    return ((Y.t() @ F) / Y.sum(0).unsqueeze(1)).float()


def test_equals_direct_per_label_mean_on_real_images(bccd, encoder):
    assert (bccd.labels.sum(0) > 0).all()
    E = image_feature_embeddings(encoder, bccd, pca=False, batch_size=3, progress=False)
    assert E.shape == (3, encoder.out_channels)
    assert torch.allclose(E, _direct_means(encoder, bccd), atol=1e-5)
    # the registry hook gives the same, PCA'd
    Z = load_label_embeddings("image-features", BCCD, encoder=encoder, dataset=bccd,
                              progress=False)
    assert torch.allclose(Z, pca_embeddings(E), atol=1e-5)


def test_pca_shape_and_variance_order():
    torch.manual_seed(1)
    F = torch.randn(6, 20) * torch.linspace(5, 0.1, 20)
    Z = pca_embeddings(F)                       # n defaults to C
    assert Z.shape == (6, 6)
    var = Z.double().var(0)
    assert (var[:-1] >= var[1:] - 1e-9).all()   # explained variance decreasing
    assert var[-1] < 1e-8                       # C centred vectors have rank C-1
    from sklearn.decomposition import PCA

    ref = PCA(n_components=3, svd_solver="full").fit(F.double().numpy())
    Z3 = pca_embeddings(F, 3)
    assert Z3.shape == (6, 3)
    np.testing.assert_allclose(Z3.double().var(0).numpy(), ref.explained_variance_, rtol=1e-4)
    with pytest.warns(UserWarning, match=r"at most min\(C, d\) = 4"):
        assert pca_embeddings(torch.randn(8, 4), 8).shape == (8, 4)
    with pytest.raises(ValueError, match="n_components"):
        pca_embeddings(F, 0)


def test_cache_hit_and_key(bccd, encoder, tmp_path):
    a = label_feature_means(encoder, bccd, batch_size=4, cache_dir=tmp_path, progress=False)
    assert not a["cache_hit"] and Path(a["cache_file"]).is_file()
    b = label_feature_means(encoder, bccd, batch_size=4, cache_dir=tmp_path, progress=False)
    assert b["cache_hit"] and b["cache_file"] == a["cache_file"]
    assert torch.equal(a["sums"], b["sums"]) and torch.equal(a["counts"], b["counts"])
    # other encoder weights -> another key, no stale hit
    other = ImageEncoder(build_backbone("small_cnn"), pool="avg").eval()
    c = label_feature_means(other, bccd, batch_size=4, cache_dir=tmp_path, progress=False)
    assert not c["cache_hit"] and c["cache_file"] != a["cache_file"]


def test_resume_after_interruption(bccd, encoder, tmp_path):
    full = label_feature_means(encoder, bccd, batch_size=3, progress=False)
    part = label_feature_means(encoder, bccd, batch_size=3, cache_dir=tmp_path,
                               progress=False, checkpoint_every=1, max_batches=2)
    assert not part["complete"] and part["num_images"] == 6
    assert len(list(tmp_path.glob("*.partial.pt"))) == 1
    seen = []
    hook = encoder.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        res = label_feature_means(encoder, bccd, batch_size=3, cache_dir=tmp_path,
                                  progress=False)
    finally:
        hook.remove()
    assert sum(seen) == len(bccd) - 6           # only the remaining images were run
    assert res["complete"] and not list(tmp_path.glob("*.partial.pt"))
    assert torch.allclose(res["sums"], full["sums"]) and torch.equal(res["counts"], full["counts"])


def _features_file(tmp_path, with_mask=False, absent=None):
    rng = np.random.default_rng(0)
    n, d, c = 30, 8, 4
    labels = (rng.random((n, c)) < 0.5).astype(np.uint8)
    if absent is not None:
        labels[:, absent] = 0
    arrays = dict(features=rng.normal(size=(n, d)).astype(np.float32), labels=labels,
                  classes=np.array(["cat", "dog", "car", "tree"]))
    if with_mask:
        arrays["mask"] = rng.random((n, c)) > 0.3
    np.savez(tmp_path / "f.npz", **arrays)
    return FeaturesDataset(tmp_path / "f.npz")


def test_label_mask_respected_with_mlp_encoder(tmp_path):
    ds = _features_file(tmp_path, with_mask=True)
    torch.manual_seed(0)
    enc = MLPEncoder(8, hidden=(16,), out_features=6).eval()
    E = image_feature_embeddings(enc, ds, pca=False, progress=False, batch_size=7)
    with torch.no_grad():
        F = enc(torch.from_numpy(ds.features)).double()
    Y = torch.as_tensor(ds.labels * ds.label_mask, dtype=torch.float64)
    assert torch.allclose(E, ((Y.t() @ F) / Y.sum(0).unsqueeze(1)).float(), atol=1e-5)
    Yu = torch.as_tensor(ds.labels, dtype=torch.float64)  # the mask changes the result
    assert not torch.allclose(E, ((Yu.t() @ F) / Yu.sum(0).unsqueeze(1)).float(), atol=1e-4)


def test_missing_label(tmp_path):
    ds = _features_file(tmp_path, absent=2)
    enc = MLPEncoder(8, hidden=(), out_features=5).eval()
    with pytest.raises(DatasetError, match=r"no training image.*\['car'\]"):
        image_feature_embeddings(enc, ds, progress=False)
    Z = image_feature_embeddings(enc, ds, pca=False, on_missing="zeros", progress=False)
    assert torch.count_nonzero(Z[2]) == 0 and torch.count_nonzero(Z[0]) > 0
    M = image_feature_embeddings(enc, ds, pca=False, on_missing="mean", progress=False)
    with torch.no_grad():
        glob = enc(torch.from_numpy(ds.features)).mean(0)
    assert torch.allclose(M[2], glob, atol=1e-5)
    with pytest.raises(ValueError, match="on_missing"):
        image_feature_embeddings(enc, ds, on_missing="drop")


def test_provider_needs_encoder_and_dataset(tmp_path):
    ds = _features_file(tmp_path)
    with pytest.raises(ValueError, match="trained backbone.*IML-GCN"):
        load_label_embeddings("image-features", ds.classes)
    from pyg_mlic.errors import ClassMismatchError

    with pytest.raises(ClassMismatchError):
        load_label_embeddings("image-features", ["a", "b", "c", "d"],
                              encoder=MLPEncoder(8, hidden=(), out_features=4), dataset=ds)


def test_random_transform_warns(data_dir, encoder):
    from pyg_mlic.data.transforms import RandomCropResizeTransform
    from pyg_mlic.data.voc import VOCDataset

    root = data_dir / "images" / "bccd"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    ds = SubsetDataset(VOCDataset(root, split="val", classes=BCCD,
                                  transform=RandomCropResizeTransform(32)), [0, 1], split="v")
    with pytest.warns(UserWarning, match="random transform"):
        label_feature_means(encoder, ds, progress=False)
