r"""Encoders producing one feature vector per image: backbone + pooling, or an MLP over
precomputed features."""
from __future__ import annotations

from typing import Sequence, Union

from torch import Tensor, nn

from pyg_mlic.backbones.pooling import build_pool


class ImageEncoder(nn.Module):
    r"""A backbone followed by global pooling: ML-GCN's image representation (Eq. 3).

    .. math::
        \mathbf{x} = f_{pool}\big(f_{cnn}(\mathbf{I}; \theta_{cnn})\big) \in \mathbb{R}^{D}

    Args:
        backbone (nn.Module): maps :math:`(B, 3, H, W) \to (B, D, h, w)` and has
            ``out_channels`` (see :func:`~pyg_mlic.backbones.build_backbone`).
        pool (str or nn.Module): ``"max"`` (:math:`f_{GMP}`, ML-GCN) or ``"avg"``
            (:math:`f_{GAP}`, IML-GCN), or a pooling module. (default: :obj:`"max"`)

    Shapes:
        - **input:** :math:`(B, 3, H, W)`
        - **output:** :math:`(B, D)`
    """

    def __init__(self, backbone: nn.Module, pool: Union[str, nn.Module] = "max") -> None:
        super().__init__()
        d = getattr(backbone, "out_channels", None)
        if not isinstance(d, int):
            raise ValueError(f"ImageEncoder: backbone {type(backbone).__name__} has no integer "
                             "'out_channels' attribute")
        self.backbone = backbone
        self.pool = build_pool(pool)
        self.out_channels: int = d

    def feature_map(self, x: Tensor) -> Tensor:
        """The backbone's feature map :math:`(B, D, h, w)` before pooling."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.backbone(x))


class MLPEncoder(nn.Module):
    r"""MLP over precomputed image features; stands in for backbone + pooling on feature
    datasets (``--dataset features``).

    .. math::
        \mathbf{h}^{(0)} = \mathbf{f},\quad
        \mathbf{h}^{(k)} = \mathrm{Dropout}(\mathrm{ReLU}(\mathbf{W}_k \mathbf{h}^{(k-1)}
        + \mathbf{b}_k)),\quad
        \mathbf{x} = \mathbf{W}_{out} \mathbf{h}^{(K)} + \mathbf{b}_{out}

    Args:
        in_features (int): size :math:`F` of each input feature vector.
        hidden (sequence of int): hidden layer sizes; ``()`` gives one linear map.
            (default: :obj:`(512,)`)
        out_features (int): output size :math:`D`. (default: :obj:`512`)
        dropout (float): dropout after each hidden activation. (default: :obj:`0.0`)
        final_activation (bool): apply ReLU to the output too (non-negative like a
            pooled CNN feature). (default: :obj:`False`)

    Shapes:
        - **input:** :math:`(B, F)`
        - **output:** :math:`(B, D)`
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (512,),
                 out_features: int = 512, dropout: float = 0.0,
                 final_activation: bool = False) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if int(in_features) < 1 or int(out_features) < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"MLPEncoder: sizes must be positive (in_features={in_features}, "
                             f"hidden={hidden}, out_features={out_features})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLPEncoder: dropout must be in [0, 1), got {dropout}")
        layers = []
        c = int(in_features)
        for h in hidden:
            layers += [nn.Linear(c, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            c = h
        layers.append(nn.Linear(c, int(out_features)))
        if final_activation:
            layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)
        self.in_features, self.hidden = int(in_features), hidden
        self.out_channels: int = int(out_features)
        self.dropout, self.final_activation = float(dropout), bool(final_activation)

    def reset_parameters(self) -> None:
        for m in self.net:
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.size(1) != self.in_features:
            raise ValueError(f"MLPEncoder expects features [B, {self.in_features}], "
                             f"got {tuple(x.shape)}")
        return self.net(x)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, hidden={self.hidden}, "
                f"out_features={self.out_channels}, dropout={self.dropout}")
