"""VariationalROIWeighting (IA-GCN Eqs. 7-9, 14)."""
import pytest
import torch

from pyg_mlic.nn import VariationalROIWeighting
from pyg_mlic.nn.variational_roi import gaussian_kl


def _inputs(B=3, K=5, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, K, D, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    x = x * mask[..., None]
    return x, mask


def test_eval_uses_the_mean_and_is_deterministic():
    torch.manual_seed(0)
    m = VariationalROIWeighting(8).eval()
    x, mask = _inputs()
    a, b = m(x, mask), m(x, mask)
    assert torch.equal(a.x, b.x) and torch.equal(a.z, a.mu)
    mu = (x @ m.w_mu.weight.t()).squeeze(-1) * mask
    torch.testing.assert_close(a.z, mu)
    torch.testing.assert_close(a.x, mu[..., None] * x)                  # Eq. 7
    assert (a.x[~mask] == 0).all() and (a.z[~mask] == 0).all()


def test_kl_equals_the_closed_form_over_real_rois():
    torch.manual_seed(1)
    m = VariationalROIWeighting(8)
    x, mask = _inputs()
    out = m(x, mask)
    per_image = []
    for b in range(3):
        mu = (x[b] @ m.w_mu.weight.t()).squeeze(-1)[mask[b]]
        lv = (x[b] @ m.w_sigma.weight.t()).squeeze(-1).clamp(-10, 10)[mask[b]]
        var = lv.exp()
        kl = 0.5 * (mu ** 2 + var - 1 - torch.log(var))
        per_image.append(kl.mean() if kl.numel() else torch.tensor(0.0))  # N_b = real ROIs
    torch.testing.assert_close(out.kl_per_image, torch.stack(per_image))
    torch.testing.assert_close(out.kl, torch.stack(per_image).mean())     # B = 3 images
    assert mask.sum(1).tolist() == [3, 5, 0]
    # KL(N(0,1) || N(0,1)) = 0; KL(N(1, e) || N(0, 1)) = (1 + e - 1 - 1) / 2
    assert float(gaussian_kl(torch.tensor(0.0), torch.tensor(0.0))) == 0.0
    torch.testing.assert_close(gaussian_kl(torch.tensor(1.0), torch.tensor(1.0)),
                               torch.tensor((1 + torch.e - 2) / 2))


def test_kl_is_per_image_eq14_hand_computed():
    # Eq. 14 is a term of one image's loss: mean over that image's ROIs, then the batch
    # mean over images. w_mu = (1, 0), w_sigma = (0, 1): mu = x_0, log sigma^2 = x_1
    m = VariationalROIWeighting(2)
    with torch.no_grad():
        m.w_mu.weight.copy_(torch.tensor([[1.0, 0.0]]))
        m.w_sigma.weight.copy_(torch.tensor([[0.0, 1.0]]))
    x = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]],     # image 0: 1 ROI
                      [[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])    # image 1: 2 ROIs
    mask = torch.tensor([[True, False, False], [True, True, False]])
    # KL(N(mu, 1) || N(0, 1)) = mu^2 / 2: image 0: 0.5; image 1: (0 + 2) / 2 = 1
    out = m.eval()(x, mask)
    torch.testing.assert_close(out.kl_per_image, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(out.kl, torch.tensor(0.75))        # (0.5 + 1) / 2
    # not the mean over the batch's ROIs, (0.5 + 0 + 2) / 3 = 0.833
    assert abs(float(out.kl.detach()) - 2.5 / 3) > 0.05
    # the same in training (the KL does not depend on the sample)
    torch.testing.assert_close(m.train()(x, mask).kl, torch.tensor(0.75))
    # an image without ROIs has an empty sum (0) and still counts as an image
    x3 = torch.cat([x, torch.zeros(1, 3, 2)])
    mask3 = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)])
    out3 = m(x3, mask3)
    torch.testing.assert_close(out3.kl_per_image, torch.tensor([0.5, 1.0, 0.0]))
    torch.testing.assert_close(out3.kl, torch.tensor(0.5))         # (0.5 + 1 + 0) / 3
    # gradients: d kl / d w_mu[0] = mean_b (1 / N_b) sum_i mu_i x_i0 = (1 + 4 / 2) / 2
    m.zero_grad()
    m(x, mask).kl.backward()
    torch.testing.assert_close(m.w_mu.weight.grad, torch.tensor([[1.5, 0.0]]))


def test_training_samples_with_the_reparameterisation_and_grads_reach_both_maps():
    torch.manual_seed(2)
    m = VariationalROIWeighting(8).train()
    x, mask = _inputs()
    out = m(x, mask)
    assert not torch.equal(out.z[mask], out.mu[mask])                    # a sample
    assert (out.z[~mask] == 0).all() and (out.x[~mask] == 0).all()
    (out.x.pow(2).sum() + out.kl).backward()
    assert m.w_mu.weight.grad.abs().sum() > 0 and m.w_sigma.weight.grad.abs().sum() > 0
    # the sample's spread matches sigma: many draws of one ROI
    zs = torch.stack([m(x, mask).z[1, 0] for _ in range(2000)]).detach()
    sd = torch.exp(0.5 * out.logvar[1, 0].detach())
    assert abs(float(zs.mean() - out.mu[1, 0].detach())) < 4 * float(sd) / 2000 ** 0.5 + 1e-6
    assert abs(float(zs.std() / sd) - 1) < 0.1


def test_extreme_inputs_stay_finite_and_errors():
    m = VariationalROIWeighting(4)
    x = torch.full((1, 2, 4), 1e4)
    out = m(x)
    assert torch.isfinite(out.kl) and torch.isfinite(out.x).all()
    assert out.logvar.abs().max() <= 10
    empty = m(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))
    assert float(empty.kl.detach()) == 0.0 and (empty.x == 0).all()
    with pytest.raises(ValueError, match="ROI features"):
        m(torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="mask"):
        m(torch.zeros(2, 3, 4), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="logvar"):
        VariationalROIWeighting(4, logvar_min=1, logvar_max=0)
