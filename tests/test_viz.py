"""ML-GCN analysis helpers of pyg_mlic.viz: classifier t-SNE (Fig. 8), k-NN retrieval
(Sec. 4.5, Fig. 7)."""
import numpy as np
import pytest
import torch

from pyg_mlic.data.synthetic import SyntheticScenes
from pyg_mlic.errors import ClassMismatchError
from pyg_mlic.viz import knn_retrieval, plot_classifier_tsne, plot_retrieval


def _png_ok(path, min_bytes=5_000):
    """Written, a real PNG, not blank (several distinct colours)."""
    import matplotlib.image as mpimg

    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > min_bytes
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.02
    assert len(np.unique(img[..., :3].reshape(-1, 3).round(2), axis=0)) > 20


# ------------------------------------------------------------------ k-NN retrieval
def test_knn_retrieval_hand_example():
    # gallery on a line: 0, 1, 3, 7, 7 (two duplicates to test the tie rule)
    g = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0], [7.0, 0.0]])
    q = torch.tensor([[2.1, 0.0], [7.0, 0.0], [-5.0, 0.0]])
    idx, dist = knn_retrieval(q, g, k=3, return_distances=True)
    assert idx.dtype == torch.long
    # 2.1: |2.1-3|=0.9, |2.1-1|=1.1, |2.1-0|=2.1
    # 7: the two copies at distance 0, lower index first, then 3 (dist 4)
    # -5: 0, 1, 3
    assert idx.tolist() == [[2, 1, 0], [3, 4, 2], [0, 1, 2]]
    assert torch.allclose(dist, torch.tensor([[0.9, 1.1, 2.1], [0.0, 0.0, 4.0],
                                              [5.0, 6.0, 8.0]], dtype=torch.float64))


def test_knn_retrieval_cosine_and_numpy_and_exclude_self():
    g = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.1]])
    q = np.array([[10.0, 0.5]])
    # cosine ignores the norm: direction (1, 0.05) is closest to (1, 0), then (1, 1)
    assert knn_retrieval(q, g, k=4, metric="cosine").tolist() == [[0, 2, 1, 3]]
    # same set as queries and gallery: never return the query itself
    idx = knn_retrieval(g, g, k=1, exclude_self=True)
    assert (idx.flatten() != torch.arange(4)).all()
    assert idx.flatten().tolist() == [2, 2, 0, 1]  # (0,1)->(1,1) at 1.0; (-1,.1)->(0,1) at 1.345


def test_knn_retrieval_matches_brute_force():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(7, 5)), rng.normal(size=(30, 5))
    ref = np.argsort(((q[:, None] - g[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :6]
    assert knn_retrieval(q, g, k=6).numpy().tolist() == ref.tolist()


@pytest.mark.parametrize("kwargs, msg", [
    (dict(k=0), "k must be"), (dict(k=6), "k must be"),
    (dict(k=2, metric="manhattan"), "metric"),
])
def test_knn_retrieval_bad_k_metric(kwargs, msg):
    g = torch.randn(5, 3)
    with pytest.raises(ValueError, match=msg):
        knn_retrieval(torch.randn(2, 3), g, **kwargs)


def test_knn_retrieval_bad_inputs():
    with pytest.raises(ValueError, match="D=3.*D=4"):
        knn_retrieval(torch.randn(2, 3), torch.randn(5, 4), k=1)
    bad = torch.randn(5, 3)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="features_gallery.*non-finite.*row 2"):
        knn_retrieval(torch.randn(2, 3), bad, k=1)
    with pytest.raises(ValueError, match="Q == G"):
        knn_retrieval(torch.randn(2, 3), torch.randn(5, 3), k=1, exclude_self=True)
    with pytest.raises(ValueError, match="zero feature"):
        knn_retrieval(torch.zeros(1, 3), torch.randn(5, 3), k=1, metric="cosine")


# ------------------------------------------------------------------ t-SNE of classifiers
def test_plot_classifier_tsne_writes_png(tmp_path):
    classes = list(SyntheticScenes.CLASSES)
    W = torch.randn(len(classes), 64)
    out = plot_classifier_tsne(W, classes, tmp_path / "tsne.png", perplexity=30.0,
                               groups=["a" if i % 2 else "b" for i in range(len(classes))])
    assert out == tmp_path / "tsne.png"
    _png_ok(out)


def test_plot_classifier_tsne_small_c_and_errors(tmp_path):
    # C = 3 (e.g. BCCD): perplexity 30 >= C is capped below C instead of failing in sklearn
    _png_ok(plot_classifier_tsne(np.random.default_rng(0).normal(size=(3, 8)),
                                 ["WBC", "RBC", "Platelets"], tmp_path / "c3.png"),
            min_bytes=2_000)
    with pytest.raises(ClassMismatchError, match="4 rows.*3 class names"):
        plot_classifier_tsne(torch.randn(4, 8), ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="C >= 3"):
        plot_classifier_tsne(torch.randn(2, 8), ["a", "b"], tmp_path / "x.png")
    W = torch.randn(5, 8)
    W[1, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite.*row 1"):
        plot_classifier_tsne(W, list("abcde"), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------ retrieval grid
def test_plot_retrieval_writes_png(tmp_path):
    gallery = SyntheticScenes("train", num_images=20, image_size=48)
    queries = SyntheticScenes("test", num_images=4, image_size=48)
    # features = the labels themselves: neighbours share labels with the query
    idx, dist = knn_retrieval(queries.labels.astype(float), gallery.labels.astype(float), k=3,
                              return_distances=True)
    out = plot_retrieval(queries, gallery, [0, 1, 2, 3], idx, tmp_path / "ret.png",
                         distances=dist)
    _png_ok(out)


def test_plot_retrieval_bad_inputs(tmp_path):
    gallery = SyntheticScenes("train", num_images=6, image_size=32)
    queries = SyntheticScenes("test", num_images=2, image_size=32)
    with pytest.raises(ValueError, match="retrieved_idx must be"):
        plot_retrieval(queries, gallery, [0, 1], np.zeros((3, 2), int), tmp_path / "r.png")
    with pytest.raises(ValueError, match="retrieved_idx has indices outside"):
        plot_retrieval(queries, gallery, [0, 1], np.array([[0, 6], [1, 2]]), tmp_path / "r.png")
    with pytest.raises(ValueError, match="query_idx has indices outside"):
        plot_retrieval(queries, gallery, [0, 5], np.zeros((2, 2), int), tmp_path / "r.png")
