r"""Global pooling of feature maps into image features."""
from __future__ import annotations

from typing import Union

from torch import Tensor, nn


def _check(x: Tensor, who: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{who} expects feature maps [B, D, h, w], got {tuple(x.shape)}")
    if x.size(2) == 0 or x.size(3) == 0:
        raise ValueError(f"{who}: empty spatial extent {tuple(x.shape)}")


class GlobalMaxPool2d(nn.Module):
    r"""Global max pooling :math:`f_{GMP}` of ML-GCN (Chen et al., CVPR 2019, Eq. 3).

    .. math::
        \mathbf{x}_{b,d} = \max_{i \le h,\; j \le w} \mathbf{F}_{b,d,i,j},
        \qquad \mathbf{x} = f_{GMP}(f_{cnn}(\mathbf{I}; \theta_{cnn})) \in \mathbb{R}^{D}

    Shapes:
        - **input:** :math:`(B, D, h, w)`
        - **output:** :math:`(B, D)`
    """

    def forward(self, x: Tensor) -> Tensor:
        _check(x, "GlobalMaxPool2d")
        return x.amax(dim=(2, 3))


class GlobalAvgPool2d(nn.Module):
    r"""Global average pooling :math:`f_{GAP}`, the image feature of IML-GCN (Singh et al.,
    :math:`F_{GAP} \in \mathbb{R}^{1 \times d}`, whose per-label means give its label
    embeddings, Eq. 5).

    .. math::
        \mathbf{x}_{b,d} = \frac{1}{hw} \sum_{i=1}^{h} \sum_{j=1}^{w} \mathbf{F}_{b,d,i,j}

    Shapes:
        - **input:** :math:`(B, D, h, w)`
        - **output:** :math:`(B, D)`
    """

    def forward(self, x: Tensor) -> Tensor:
        _check(x, "GlobalAvgPool2d")
        return x.mean(dim=(2, 3))


_POOLS = {"max": GlobalMaxPool2d, "gmp": GlobalMaxPool2d,
          "avg": GlobalAvgPool2d, "mean": GlobalAvgPool2d, "gap": GlobalAvgPool2d}


def build_pool(pool: Union[str, nn.Module]) -> nn.Module:
    """``"max"``/``"gmp"`` → :class:`GlobalMaxPool2d`, ``"avg"``/``"mean"``/``"gap"`` →
    :class:`GlobalAvgPool2d`; a module is returned unchanged."""
    if isinstance(pool, nn.Module):
        return pool
    key = str(pool).lower()
    if key not in _POOLS:
        raise ValueError(f"unknown pooling {pool!r}; valid: {sorted(_POOLS)}")
    return _POOLS[key]()
