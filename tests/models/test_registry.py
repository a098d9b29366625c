import pytest
import torch

from pyg_mlic.models import ModelOutput, build_model, list_models


def test_registry_lists_baseline_and_rejects_unknown():
    assert "baseline" in list_models()
    with pytest.raises(ValueError, match="unknown model.*valid"):
        build_model("no_such_model", classes=["a"])


def test_baseline_image_and_features():
    m = build_model("baseline", classes=list("abc"), backbone="small_cnn")
    out = m({"image": torch.randn(2, 3, 64, 64)})
    assert isinstance(out, ModelOutput) and out.logits.shape == (2, 3)
    bb, head = m.parameter_groups()
    assert bb and head and not ({id(p) for p in bb} & {id(p) for p in head})
    f = build_model("baseline", classes=list("abcd"), input_kind="features", in_features=10)
    assert f({"features": torch.randn(5, 10)}).logits.shape == (5, 4)


def test_masked_loss_ignores_masked_entries():
    m = build_model("baseline", classes=list("ab"), input_kind="features", in_features=3)
    logits = torch.tensor([[5.0, -5.0]])
    target = torch.tensor([[0.0, 0.0]])
    full = m.classification_loss(logits, target)
    masked = m.classification_loss(logits, target, torch.tensor([[False, True]]))
    assert masked < 0.01 < full
