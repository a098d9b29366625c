r"""Encoders producing one feature vector per image: backbone + pooling, or an MLP over
precomputed features."""
from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from pyg_mlic.backbones.pooling import build_pool

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


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


class _ReLUDropout(nn.Module):
    r""":math:`\mathrm{Dropout}_p(\mathrm{ReLU}(x))` as one module."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.dropout(torch.relu(x), self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _layer_sizes(hidden: Any) -> Tuple[int, ...]:
    """``hidden`` of :class:`MLPEncoder` (``encoder_hidden`` of the models) as a tuple of
    ints: a list or tuple of integers; anything else (a string such as ``--set
    encoder_hidden=[1,`` leaves, a bare number, 16.5) is a ValueError naming it."""
    ok = isinstance(hidden, Sequence) and not isinstance(hidden, (str, bytes)) and all(
        isinstance(h, numbers.Integral) and not isinstance(h, bool)
        or isinstance(h, float) and h.is_integer() for h in hidden)
    if not ok:
        raise ValueError(f"MLPEncoder: hidden (encoder_hidden) must be a list of integer "
                         f"layer widths, e.g. [512] or [] for none, got {hidden!r}")
    return tuple(int(h) for h in hidden)


class MLPEncoder(nn.Module):
    r"""MLP over precomputed image features; stands in for backbone + pooling on feature
    datasets (``--dataset features``).

    .. math::
        \mathbf{h}^{(0)} = \mathrm{Dropout}_{p_0}\big(\mathrm{clip}_{c}\big(
        (\mathbf{f} - \boldsymbol{\mu}) \oslash \boldsymbol{\sigma}\big)\big),\quad
        \mathbf{h}^{(k)} = \mathrm{Dropout}_{p}(\mathrm{ReLU}(\mathbf{W}_k \mathbf{h}^{(k-1)}
        + \mathbf{b}_k)),\quad
        \mathbf{x} = \mathbf{W}_{out} \mathbf{h}^{(K)} + \mathbf{b}_{out}
        \;[+\; \mathbf{W}_{skip}\, \mathbf{h}^{(0)}]

    :math:`\mathrm{clip}_c(z) = \min(\max(z, -c), c)` elementwise (the identity without
    ``clip``). :math:`\boldsymbol{\mu}, \boldsymbol{\sigma}` are per-feature statistics of the
    *training* split (buffers ``input_mean`` / ``input_std``, saved in the state dict, so
    evaluation, prediction and export apply the same map); they are the identity until
    :meth:`fit_standardization` sets them (:func:`pyg_mlic.engine.fit` does, from the
    training split, before training). Standardising matters for raw CNN features whose
    channels differ in scale by orders of magnitude: a fixed learning rate and weight
    decay then act very differently per channel.

    Args:
        in_features (int): size :math:`F` of each input feature vector.
        hidden (sequence of int): hidden layer sizes; ``()`` gives one linear map.
            (default: :obj:`(512,)`)
        out_features (int): output size :math:`D`. (default: :obj:`512`)
        dropout (float): dropout :math:`p` after each hidden activation. (default: :obj:`0.0`)
        final_activation (bool): apply ReLU to the output too (non-negative like a
            pooled CNN feature). (default: :obj:`False`)
        input_dropout (float): dropout :math:`p_0` on the (standardised) input features.
            (default: :obj:`0.0`)
        standardize (bool): hold the input statistics buffers and apply them.
            (default: :obj:`False`)
        shortcut (bool): add a linear map of the input to the output
            (:math:`\mathbf{W}_{skip}`, no bias), so that the encoder contains a linear
            model of the features next to the MLP; ignored when ``hidden`` is empty.
            (default: :obj:`False`)
        std_floor (float): :math:`\alpha \ge 0`, the floor of the standardisation:
            :meth:`fit_standardization` divides feature :math:`j` by
            :math:`\max(\sigma_j, \alpha\, \mathrm{median}_k\, \sigma_k)`, so that a
            feature varying much less than the typical one (a rarely active CNN channel,
            a rare binary indicator) is not amplified beyond it; ``0``: plain
            standardisation. (default: :obj:`0.0`)
        clip (float, optional): :math:`c > 0`: clip each standardised feature to
            :math:`[-c, c]` (winsorising: a value :math:`c` standard deviations from the
            training mean or further counts as :math:`c`, so that one rare spike cannot
            dominate a row); ``None``: no clipping. (default: :obj:`None`)

    Shapes:
        - **input:** :math:`(B, F)`
        - **output:** :math:`(B, D)`
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (512,),
                 out_features: int = 512, dropout: float = 0.0,
                 final_activation: bool = False, input_dropout: float = 0.0,
                 standardize: bool = False, shortcut: bool = False,
                 std_floor: float = 0.0, clip: Optional[float] = None) -> None:
        super().__init__()
        hidden = _layer_sizes(hidden)
        if int(in_features) < 1 or int(out_features) < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"MLPEncoder: sizes must be positive (in_features={in_features}, "
                             f"hidden={hidden}, out_features={out_features})")
        for name, p in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"MLPEncoder: {name} must be in [0, 1), got {p}")
        if isinstance(std_floor, bool) or not isinstance(std_floor, (int, float)) or \
                not math.isfinite(std_floor) or std_floor < 0:
            raise ValueError(f"MLPEncoder: std_floor must be a finite number >= 0, got "
                             f"{std_floor!r}")
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                                 or not math.isfinite(clip) or clip <= 0):
            raise ValueError(f"MLPEncoder: clip must be a finite number > 0 or None, got "
                             f"{clip!r}")
        layers = []
        c = int(in_features)
        for h in hidden:
            # ReLU and dropout in one slot: the layer indices (state-dict keys) are the
            # same with and without dropout, so checkpoints of either load into both
            layers += [nn.Linear(c, h), _ReLUDropout(dropout) if dropout > 0
                       else nn.ReLU(inplace=True)]
            c = h
        layers.append(nn.Linear(c, int(out_features)))
        if final_activation:
            layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)
        self.in_features, self.hidden = int(in_features), hidden
        self.out_channels: int = int(out_features)
        self.dropout, self.final_activation = float(dropout), bool(final_activation)
        self.input_dropout = float(input_dropout)
        self.drop_in = nn.Dropout(self.input_dropout) if self.input_dropout > 0 else nn.Identity()
        self.standardize = bool(standardize)
        self.std_floor = float(std_floor)
        self.clip = None if clip is None else float(clip)
        if self.standardize:
            self.register_buffer("input_mean", torch.zeros(self.in_features))
            self.register_buffer("input_std", torch.ones(self.in_features))
        self.skip = (nn.Linear(self.in_features, self.out_channels, bias=False)
                     if shortcut and hidden else None)

    def reset_parameters(self) -> None:
        for m in self.net:
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        if self.skip is not None:
            self.skip.reset_parameters()

    @torch.no_grad()
    def fit_standardization(self, features: Union[Tensor, "np.ndarray"]) -> "MLPEncoder":
        r"""Set :math:`\boldsymbol{\mu}, \boldsymbol{\sigma}` from training features
        ``[N, F]`` (computed in float64; a feature whose standard deviation is below
        :math:`10^{-6}\,(1 + |\mu|)` (constant on the training split) keeps
        :math:`\sigma = 1`, so it is centred and never divided by ~0). With
        ``std_floor`` :math:`\alpha > 0` every other feature gets
        :math:`\sigma_j \leftarrow \max(\sigma_j, \alpha\, m)`, :math:`m` the median
        standard deviation of the non-constant features."""
        if not self.standardize:
            raise ValueError("MLPEncoder.fit_standardization: built with standardize=False")
        X = torch.as_tensor(features).detach().to("cpu", torch.float64)
        if X.dim() != 2 or X.size(1) != self.in_features or X.size(0) < 1:
            raise ValueError(f"MLPEncoder.fit_standardization expects features [N >= 1, "
                             f"{self.in_features}], got {tuple(X.shape)}")
        if not torch.isfinite(X).all():
            raise ValueError("MLPEncoder.fit_standardization: features have non-finite values")
        mean = X.mean(0)
        std = X.std(0, unbiased=False)
        varies = std > 1e-6 * (1.0 + mean.abs())
        if self.std_floor > 0 and bool(varies.any()):
            std = torch.maximum(std, self.std_floor * std[varies].quantile(0.5))
        std = torch.where(varies, std, torch.ones_like(std))
        self.input_mean.copy_(mean.to(self.input_mean))
        self.input_std.copy_(std.to(self.input_std))
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # checkpoints written before the statistics existed: those models applied none
        if self.standardize:
            for name, fill in (("input_mean", 0.0), ("input_std", 1.0)):
                if prefix + name not in state_dict and any(k.startswith(prefix)
                                                           for k in state_dict):
                    state_dict[prefix + name] = torch.full((self.in_features,), fill)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.size(1) != self.in_features:
            raise ValueError(f"MLPEncoder expects features [B, {self.in_features}], "
                             f"got {tuple(x.shape)}")
        if self.standardize:
            x = (x - self.input_mean) / self.input_std
        if self.clip is not None:
            x = x.clamp(-self.clip, self.clip)
        x = self.drop_in(x)
        out = self.net(x)
        if self.skip is not None:
            out = out + self.skip(x)
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, hidden={self.hidden}, "
                f"out_features={self.out_channels}, dropout={self.dropout}, "
                f"input_dropout={self.input_dropout}, standardize={self.standardize}"
                + (f", std_floor={self.std_floor}" if self.std_floor else "")
                + (f", clip={self.clip}" if self.clip is not None else ""))
