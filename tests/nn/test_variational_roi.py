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
    mu = (x @ m.w_mu.weight.t()).squeeze(-1)[mask]
    lv = (x @ m.w_sigma.weight.t()).squeeze(-1).clamp(-10, 10)[mask]
    var = lv.exp()
    ref = torch.mean(0.5 * (mu ** 2 + var - 1 - torch.log(var)))
    torch.testing.assert_close(out.kl, ref)
    assert mask.sum() == 8                                                # N = real ROIs only
    # KL(N(0,1) || N(0,1)) = 0; KL(N(1, e) || N(0, 1)) = (1 + e - 1 - 1) / 2
    assert float(gaussian_kl(torch.tensor(0.0), torch.tensor(0.0))) == 0.0
    torch.testing.assert_close(gaussian_kl(torch.tensor(1.0), torch.tensor(1.0)),
                               torch.tensor((1 + torch.e - 2) / 2))


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
