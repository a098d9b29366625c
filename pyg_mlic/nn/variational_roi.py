"""Variational ROI weighting of IA-GCN."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

__all__ = ["VariationalROIWeighting", "VariationalROIOutput", "gaussian_kl"]


class VariationalROIOutput(NamedTuple):
    """Output of :class:`VariationalROIWeighting`, a named tuple with fields

    - ``x``: ``[B, K, D]`` weighted ROI features :math:`\\mathbf{X}^w` (padding: 0);
    - ``z``: ``[B, K]`` the weights used (a sample in training, the mean in eval);
    - ``mu``: ``[B, K]`` :math:`z_\\mu`;
    - ``logvar``: ``[B, K]`` :math:`\\log z_{\\sigma^2}` (clamped);
    - ``kl``: scalar :math:`\\mathcal{L}_{KL}` of Eq. 14: per image the mean over its real
      ROIs, then the mean over the images of the batch;
    - ``kl_per_image``: ``[B]`` the per-image terms (0 for an image without real ROIs).
    """

    x: Tensor
    z: Tensor
    mu: Tensor
    logvar: Tensor
    kl: Tensor
    kl_per_image: Tensor


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    r"""Elementwise :math:`\mathrm{KL}(\mathcal{N}(\mu, \sigma^2) \,\|\, \mathcal{N}(0, 1))
    = \tfrac12(\mu^2 + \sigma^2 - 1 - \log\sigma^2)` with :math:`\log\sigma^2` = ``logvar``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


class VariationalROIWeighting(nn.Module):
    r"""Adaptive ROI weights learned by variational inference (IA-GCN, Wang et al.,
    Sec. 3.4, Eqs. 7–9 and the KL term of Eq. 14).

    For the :math:`K` ROI features :math:`\mathbf{X} \in \mathbb{R}^{K \times D}` of an
    image,

    .. math::
        \mathbf{z}_\mu = \mathbf{X}\mathbf{w}_\mu,\qquad
        \log \mathbf{z}_{\sigma^2} = \mathbf{X}\mathbf{w}_{\sigma^2}
        \quad \text{(Eqs. 8, 9)}

    .. math::
        \mathbf{z} = \mathbf{z}_\mu + \mathbf{z}_{\sigma}\odot\boldsymbol{\epsilon},\;
        \boldsymbol{\epsilon} \sim \mathcal{N}(\mathbf{0}, \mathbf{I})
        \;\text{(training)},\qquad \mathbf{z} = \mathbf{z}_\mu \;\text{(eval)},\qquad
        \mathbf{X}^w = \mathbf{z} \odot \mathbf{X} \quad \text{(Eq. 7)}

    .. math::
        \mathcal{L}_{KL} = \frac{1}{N}\sum_{i=1}^{N}
        \mathrm{KL}\big(\mathcal{N}((z_\mu)_i, (z_{\sigma^2})_i)\,\|\,\mathcal{N}(0, 1)\big)
        \quad \text{(Eq. 14)}

    **Reduction.** Eq. 14 is a term of the *per-image* loss of Eq. 12 (next to
    :math:`\mathcal{L}_{ML}`, Eq. 13, which averages over the :math:`C` labels of one image):
    :math:`\mathbf{z} \in \mathbb{R}^N` holds the weights of the :math:`N` ROIs of one image
    (Sec. 3.4), so the :math:`\frac{1}{N}\sum_{i=1}^{N}` runs over that image's ROIs. A batch
    averages the per-image losses over its :math:`B` images, as the classification loss does:

    .. math::
        \mathcal{L}_{KL} = \frac{1}{B}\sum_{b=1}^{B} \frac{1}{N_b}
        \sum_{i \in \text{ROIs}(b)} \mathrm{KL}_{b,i}

    with :math:`N_b` the number of *real* ROIs of image :math:`b` (the paper's :math:`N = 40`
    when the RPN fills every slot). Every image weighs the same whatever its ROI count; an
    image without any real ROI has an empty sum, :math:`\mathcal{L}_{KL}^{(b)} = 0`, and still
    counts in :math:`B` (a batch without any real ROI gives :math:`\mathcal{L}_{KL} = 0`).
    (A mean over all the real ROIs of the batch, the earlier reduction, weighs an image by
    its ROI count; the two agree when every image has the same number of ROIs.)

    **Log-variance parameterisation.** Eq. 9 writes the variance itself as the linear map
    :math:`\mathbf{X}\mathbf{w}_{\sigma^2}`, which can be negative. We read the linear map
    as :math:`\log\sigma^2` (the usual VAE choice), so :math:`\sigma^2 = \exp(\cdot) > 0`
    always; it is clamped to ``[logvar_min, logvar_max]`` so that :math:`\sigma^2` and the
    KL stay finite. The reparameterisation trick lets gradients reach both
    :math:`\mathbf{w}_\mu` and :math:`\mathbf{w}_{\sigma^2}`.

    **Gradient of the KL term.** :math:`\mathcal{L}_{KL}` regularises the posterior of the
    ROI weights, i.e. the inference maps :math:`\mathbf{w}_\mu, \mathbf{w}_{\sigma^2}`. When
    the ROI features are trainable (IA-GCN with ``rois="boxes"`` pools them from the image
    backbone it shares with the global branch) its gradient would also reshape the features
    towards :math:`\mathbf{X}\mathbf{w}_\mu = \mathbf{X}\mathbf{w}_{\sigma^2} = 0`, against
    the classification loss (at initialisation on the synthetic scenes its gradient on the
    backbone was 0.9-2.0x the classification loss's, three seeds). In the paper the ROI
    features come from an RPN, not from the backbone the loss trains. By default the KL is therefore computed
    on :math:`\mathrm{sg}(\mathbf{X})` (stop-gradient; same value): it trains
    :math:`\mathbf{w}_\mu, \mathbf{w}_{\sigma^2}` only, and ``kl_input_grad=True`` restores
    the full gradient.

    Padding ROIs (``mask`` ``False``) get :math:`z = 0`, zero features and do not enter
    :math:`\mathcal{L}_{KL}` nor :math:`N_b`.

    Args:
        in_channels (int): ROI feature size :math:`D`.
        bias (bool, optional): add biases to the two linear maps (Eqs. 8–9 have none).
            (default: :obj:`False`)
        logvar_min, logvar_max (float, optional): clamp range of :math:`\log\sigma^2`.
            (default: :obj:`-10.0`, :obj:`10.0`)
        kl_input_grad (bool, optional): let the gradient of :math:`\mathcal{L}_{KL}` reach
            the ROI features :math:`\mathbf{X}` (and whatever computed them). By default it
            reaches only :math:`\mathbf{w}_\mu` and :math:`\mathbf{w}_{\sigma^2}` (see
            *Gradient of the KL term*); the weighted features :math:`\mathbf{X}^w` pass
            gradients to :math:`\mathbf{X}` either way. (default: :obj:`False`)

    Shapes:
        - **input:** ROI features :math:`(B, K, D)`, mask :math:`(B, K)` bool (optional)
        - **output:** :class:`VariationalROIOutput` (``x`` :math:`(B, K, D)`, ``z``,
          ``mu``, ``logvar`` :math:`(B, K)`, ``kl`` scalar, ``kl_per_image`` :math:`(B)`)
    """

    def __init__(self, in_channels: int, bias: bool = False, logvar_min: float = -10.0,
                 logvar_max: float = 10.0, kl_input_grad: bool = False) -> None:
        super().__init__()
        if int(in_channels) < 1:
            raise ValueError(f"VariationalROIWeighting: in_channels must be >= 1, got "
                             f"{in_channels}")
        if not logvar_min < logvar_max:
            raise ValueError(f"VariationalROIWeighting: need logvar_min < logvar_max, got "
                             f"{logvar_min}, {logvar_max}")
        self.in_channels = int(in_channels)
        self.logvar_min, self.logvar_max = float(logvar_min), float(logvar_max)
        self.kl_input_grad = bool(kl_input_grad)
        #: :math:`\mathbf{w}_\mu` (Eq. 8)
        self.w_mu = nn.Linear(self.in_channels, 1, bias=bias)
        #: :math:`\mathbf{w}_{\sigma^2}` (Eq. 9), producing :math:`\log\sigma^2`
        self.w_sigma = nn.Linear(self.in_channels, 1, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.w_mu.reset_parameters()
        self.w_sigma.reset_parameters()

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> VariationalROIOutput:
        if x.dim() != 3 or x.size(-1) != self.in_channels:
            raise ValueError(f"VariationalROIWeighting: ROI features must be "
                             f"[B, K, {self.in_channels}], got {tuple(x.shape)}")
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        elif tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"VariationalROIWeighting: mask must be {list(x.shape[:2])}, got "
                             f"{list(mask.shape)}")
        m = mask.to(x.dtype)
        mu = self.w_mu(x).squeeze(-1) * m
        logvar = self.w_sigma(x).squeeze(-1).clamp(self.logvar_min, self.logvar_max) * m
        if self.training:
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        else:
            z = mu
        z = z * m
        mu_k, logvar_k = mu, logvar
        if not self.kl_input_grad and x.requires_grad:
            # the same values; the KL's gradient reaches w_mu and w_sigma, not the features
            xd = x.detach()
            mu_k = self.w_mu(xd).squeeze(-1) * m
            logvar_k = self.w_sigma(xd).squeeze(-1).clamp(self.logvar_min, self.logvar_max) * m
        # Eq. 14 per image (mean over its real ROIs), then the mean over the images
        kl_img = (gaussian_kl(mu_k, logvar_k) * m).sum(1) / m.sum(1).clamp_min(1.0)
        kl = kl_img.mean() if kl_img.numel() else kl_img.sum()
        return VariationalROIOutput(z.unsqueeze(-1) * x * m.unsqueeze(-1), z, mu, logvar, kl,
                                    kl_img)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, logvar_range=({self.logvar_min}, "
                f"{self.logvar_max}), kl_input_grad={self.kl_input_grad}")
