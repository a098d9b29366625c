import math

import pytest
import torch
import torch.nn.functional as F

from pyg_mlic.losses import (AsymmetricLoss, ClassWeightedBCE, asymmetric_loss,
                             class_weighted_bce, positive_ratio)


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def test_asl_matches_hand_formula_with_clip_and_gammas():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.5, 0.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    gp, gn, m = 1.0, 4.0, 0.2
    expected = []
    for z, y in zip(logits.flatten().tolist(), target.flatten().tolist()):
        p = _sig(z)
        if y == 1:
            expected.append(-((1 - p) ** gp) * math.log(p))
        else:
            pm = max(p - m, 0.0)
            expected.append(-(pm ** gn) * math.log(1 - pm))
    per = asymmetric_loss(logits, target, gp, gn, m, reduction="none")
    assert torch.allclose(per.flatten(), torch.tensor(expected), atol=1e-6)
    # -1.0 -> p = 0.269 > 0.2: shifted but kept; 0.5 -> p=0.62; the clip really matters:
    assert per[0, 1] > 0
    # the default reduction is the official code's sum; "mean" divides by the B*C = 6 entries
    assert math.isclose(float(asymmetric_loss(logits, target, gp, gn, m)),
                        sum(expected), rel_tol=1e-6)
    assert math.isclose(float(asymmetric_loss(logits, target, gp, gn, m, reduction="sum")),
                        sum(expected), rel_tol=1e-6)
    assert math.isclose(float(asymmetric_loss(logits, target, gp, gn, m, reduction="mean")),
                        sum(expected) / 6, rel_tol=1e-6)


def test_asl_default_reduction_is_a_sum_by_hand():
    # two entries, written out: z = 0, y = 1 -> p = 1/2, gamma+ = 0: -log(1/2) = log 2;
    # z = log 3, y = 0 -> p = 3/4, margin 0.05 -> p_m = 0.7, gamma- = 4:
    # -(0.7 ** 4) * log(1 - 0.7) = -0.2401 * log(0.3)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    target = torch.tensor([[1.0, 0.0]])
    pos, neg = math.log(2.0), -0.2401 * math.log(0.3)
    assert (pos, neg) == (pytest.approx(0.693147, abs=1e-6), pytest.approx(0.289074, abs=1e-6))
    assert float(asymmetric_loss(logits, target)) == pytest.approx(pos + neg, rel=1e-6)
    assert float(AsymmetricLoss()(logits, target)) == pytest.approx(pos + neg, rel=1e-6)
    assert float(asymmetric_loss(logits, target, reduction="mean")) == \
        pytest.approx((pos + neg) / 2, rel=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (4, 3), (32, 15)])
def test_asl_sum_is_b_times_c_times_mean(shape):
    torch.manual_seed(1)
    z = torch.randn(*shape) * 3
    y = (torch.rand(*shape) > 0.6).float()
    B, C = shape
    s = asymmetric_loss(z, y, reduction="sum")
    assert torch.allclose(s, B * C * asymmetric_loss(z, y, reduction="mean"), rtol=1e-5)
    # with a mask: sum = (number of unmasked entries) * mean
    mask = torch.rand(*shape) > 0.3
    mask.view(-1)[0] = True
    sm = asymmetric_loss(z, y, mask=mask, reduction="sum")
    assert torch.allclose(sm, mask.sum() * asymmetric_loss(z, y, mask=mask, reduction="mean"),
                          rtol=1e-5)


def test_mean_reduction_equals_sum_with_decay_divided_by_entries_under_adam():
    """Coupled weight decay (torch.optim.Adam's weight_decay adds wd * w to the gradient):
    the mean with wd trains exactly like the sum with wd * B * C (Adam is invariant to the
    scale of the gradient, up to eps); so the mean is not a mere change of the learning rate:
    it makes the decay B * C times stronger against the data term."""
    torch.manual_seed(0)
    B, F_, C, wd = 8, 5, 3, 1e-2
    x = torch.randn(B, F_)
    y = (torch.rand(B, C) > 0.5).float()
    w0 = torch.randn(F_, C)

    def train(reduction, decay, steps=20):
        w = w0.clone().requires_grad_()
        opt = torch.optim.Adam([w], lr=1e-2, weight_decay=decay, eps=1e-30)
        for _ in range(steps):
            opt.zero_grad()
            asymmetric_loss(x @ w, y, reduction=reduction).backward()
            opt.step()
        return w.detach()

    same = train("mean", wd)
    assert (same - w0).abs().max() > 0.1                               # it trained
    assert (same - train("sum", wd * B * C)).abs().max() < 1e-6        # fp32 rounding only
    # ... and not like the sum with the same wd (there the decay is B*C times weaker)
    assert (same - train("sum", wd)).abs().max() > 1e-3


def test_asl_clip_discards_easy_negatives():
    logits = torch.tensor([[-4.0]])  # p = 0.018 < clip 0.05
    out = asymmetric_loss(logits.requires_grad_(), torch.zeros(1, 1), 0.0, 4.0, 0.05)
    assert float(out.detach()) == 0.0
    out.backward()
    assert float(logits.grad) == 0.0


def test_asl_equals_bce_without_focusing_and_clip():
    torch.manual_seed(0)
    logits = torch.randn(5, 7) * 4
    target = (torch.rand(5, 7) > 0.5).float()
    asl = asymmetric_loss(logits, target, 0.0, 0.0, 0.0)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    assert torch.allclose(asl, bce, atol=1e-5)
    assert torch.allclose(asymmetric_loss(logits, target, 0.0, 0.0, 0.0, reduction="mean"),
                          F.binary_cross_entropy_with_logits(logits, target), atol=1e-6)
    # also exact at extreme logits (logsigmoid, no eps clamp)
    big = torch.tensor([[60.0, -60.0]])
    tb = torch.tensor([[0.0, 1.0]])
    assert torch.allclose(asymmetric_loss(big, tb, 0, 0, 0),
                          F.binary_cross_entropy_with_logits(big, tb, reduction="sum"))


@pytest.mark.parametrize("disable", [True, False])
@pytest.mark.parametrize("gammas", [(0.0, 4.0, 0.05), (1.0, 4.0, 0.05), (0.5, 0.5, 0.0),
                                    (0.5, 0.3, 0.1)])
def test_asl_gradients_finite_at_extreme_logits(disable, gammas):
    logits = torch.tensor([[50.0, -50.0, 50.0, -50.0, 0.0, 200.0, -200.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]])
    loss = asymmetric_loss(logits, target, *gammas, disable_focal_grad=disable)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_asl_focal_grad_flag_changes_gradient_only():
    logits = torch.tensor([[0.3, -0.2]])
    target = torch.tensor([[1.0, 0.0]])
    grads = []
    for disable in (True, False):
        z = logits.clone().requires_grad_()
        loss = asymmetric_loss(z, target, 2.0, 4.0, 0.05, disable_focal_grad=disable)
        loss.backward()
        grads.append((float(loss.detach()), z.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0])
    assert not torch.allclose(grads[0][1], grads[1][1])


def test_asl_mask_ignores_entries():
    logits = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[True, False], [True, True]])
    per = asymmetric_loss(logits, target, reduction="none")
    masked = asymmetric_loss(logits, target, mask=mask)
    assert torch.allclose(masked, per[mask].sum())
    assert torch.allclose(asymmetric_loss(logits, target, mask=mask, reduction="mean"),
                          per[mask].mean())
    # changing a masked-out logit changes nothing
    l2 = logits.clone()
    l2[0, 1] = 100.0
    assert torch.allclose(asymmetric_loss(l2, target, mask=mask), masked)
    assert float(asymmetric_loss(logits, target, mask=torch.zeros(2, 2, dtype=torch.bool))) == 0


def test_asl_module_and_bad_args():
    crit = AsymmetricLoss(gamma_pos=1, gamma_neg=3, clip=0.1)
    z, y = torch.randn(3, 4), (torch.rand(3, 4) > 0.5).float()
    assert torch.allclose(crit(z, y), asymmetric_loss(z, y, 1, 3, 0.1))
    with pytest.raises(ValueError, match="gamma_neg"):
        asymmetric_loss(z, y, gamma_neg=-1)
    with pytest.raises(ValueError, match="clip"):
        asymmetric_loss(z, y, clip=1.0)
    with pytest.raises(ValueError, match="reduction"):
        AsymmetricLoss(reduction="avg")
    with pytest.raises(ValueError, match="same shape"):
        asymmetric_loss(z, y[:, :3])
    with pytest.raises(ValueError, match="target values"):
        asymmetric_loss(z, y * 2)
    with pytest.raises(ValueError, match="mask"):
        asymmetric_loss(z, y, mask=torch.ones(3, 3, dtype=torch.bool))


def test_class_weighted_bce_weights_by_hand():
    logits = torch.tensor([[0.4, -1.2, 2.0], [1.0, 0.1, -0.7]])
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    r = [0.1, 0.5, 0.8]
    beta = 0.4
    expected = []
    for i in range(2):
        for c in range(3):
            y, p = float(target[i, c]), _sig(float(logits[i, c]))
            w = y * math.exp(beta * (1 - r[c])) + (1 - y) * math.exp(beta * r[c])
            expected.append(-w * (y * math.log(p) + (1 - y) * math.log(1 - p)))
    per = class_weighted_bce(logits, target, r, beta, reduction="none")
    assert torch.allclose(per.flatten(), torch.tensor(expected), atol=1e-6)
    assert class_weighted_bce(logits, target, r, beta).item() == pytest.approx(sum(expected) / 6)
    # beta = 0 is plain BCE
    assert torch.allclose(class_weighted_bce(logits, target, r, 0.0),
                          F.binary_cross_entropy_with_logits(logits, target))
    mask = torch.tensor([[True, True, False], [False, True, True]])
    assert torch.allclose(class_weighted_bce(logits, target, r, beta, mask=mask),
                          per[mask].mean())
    mod = ClassWeightedBCE(r, beta)
    assert torch.allclose(mod(logits, target), class_weighted_bce(logits, target, r, beta))
    assert "pos_ratio" in mod.state_dict()


def test_class_weighted_bce_bad_args():
    z, y = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="beta"):
        class_weighted_bce(z, y, [0.1, 0.2, 0.3], beta=-0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\].*\[2\]"):
        class_weighted_bce(z, y, [0.1, 0.2, 1.3])
    with pytest.raises(ValueError, match="shape"):
        class_weighted_bce(z, y, [0.1, 0.2])
    with pytest.raises(ValueError, match="beta"):
        ClassWeightedBCE([0.1], beta=float("nan"))


def test_positive_ratio():
    y = torch.tensor([[1, 0, 1], [1, 0, 0], [0, 0, 1], [1, 1, 0]])
    assert torch.allclose(positive_ratio(y), torch.tensor([0.75, 0.25, 0.5]))
    mask = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    assert torch.allclose(positive_ratio(y, mask), torch.tensor([2 / 3, 0.25, 2 / 3]))
    with pytest.raises(ValueError):
        positive_ratio(torch.zeros(3))
