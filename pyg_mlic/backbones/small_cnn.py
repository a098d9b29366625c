r"""A small, fast CNN for the synthetic-scenes demo (64x64 images on a CPU)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from torch import Tensor, nn

from pyg_mlic.backbones.registry import (IMAGENET_MEAN, IMAGENET_STD, load_weights_into,
                                        register_backbone, resolve_weights)

#: the preprocessing of SmallCNN: the ImageNet statistics the demo and ``--dataset
#: synthetic`` have always normalised its inputs with (it has no pretrained weights; a
#: checkpoint trained here saw these statistics)
SMALL_CNN_DATA_CONFIG: Dict[str, Any] = {
    "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (3, 64, 64),
    "interpolation": "bilinear", "source": "small_cnn (the demo's normalisation)",
}


class SmallCNN(nn.Module):
    r"""Stack of ``len(widths)`` blocks ``Conv3x3 → BatchNorm → ReLU → MaxPool2x2``.

    .. math::
        \mathbf{F}^{(k)} = \mathrm{MaxPool}_{2\times 2}\big(\mathrm{ReLU}(
        \mathrm{BN}(\mathbf{W}^{(k)} * \mathbf{F}^{(k-1)}))\big),\qquad
        \mathbf{F}^{(0)} = \mathbf{I}

    With the default four blocks a :math:`64 \times 64` image gives a
    :math:`128 \times 4 \times 4` map (stride 16), small enough to train the demo's models
    in minutes on two CPU cores. Convolutions use Kaiming-normal initialisation.

    Args:
        widths (sequence of int): output channels of each block. (default:
            :obj:`(16, 32, 64, 128)`)
        in_channels (int): image channels. (default: :obj:`3`)
        weights: :obj:`None` (random init), a local weights file or a state dict.

    Shapes:
        - **input:** :math:`(B, C_{in}, H, W)`
        - **output:** :math:`(B, \text{widths}[-1], \lfloor H/2^{K} \rfloor,
          \lfloor W/2^{K} \rfloor)` with :math:`K` = ``len(widths)``
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128), in_channels: int = 3,
                 weights: Union[None, str, Path, Mapping[str, Tensor]] = None) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"SmallCNN: widths must be a non-empty list of positive ints, "
                             f"got {widths}")
        if in_channels < 1:
            raise ValueError(f"SmallCNN: in_channels must be positive, got {in_channels}")
        blocks = []
        c = int(in_channels)
        for w in widths:
            blocks.append(nn.Sequential(
                nn.Conv2d(c, w, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.in_channels, self.widths = int(in_channels), widths
        self.out_channels: int = widths[-1]
        self.reset_parameters()
        resolved = resolve_weights(weights)
        source: Optional[str] = None
        if resolved is not None:
            source = str(weights) if not isinstance(weights, Mapping) else "(state dict)"
            load_weights_into(self, resolved, source)  # type: ignore[arg-type]
        mean, std = SMALL_CNN_DATA_CONFIG["mean"], SMALL_CNN_DATA_CONFIG["std"]
        if in_channels != 3:  # other inputs than RGB: the channel-averaged statistics
            mean = (sum(mean) / 3,) * in_channels
            std = (sum(std) / 3,) * in_channels
        self.default_cfg: Dict[str, Any] = {
            "input_size": (in_channels, 64, 64), "mean": mean, "std": std,
            "weights": source, "stride": 2 ** len(widths),
        }

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        k = len(self.widths)
        if x.dim() != 4 or x.size(1) != self.in_channels:
            raise ValueError(f"SmallCNN expects images [B, {self.in_channels}, H, W], "
                             f"got {tuple(x.shape)}")
        if min(x.shape[-2:]) < 2 ** k:
            raise ValueError(f"SmallCNN with {k} blocks needs images of at least "
                             f"{2 ** k}x{2 ** k} pixels, got {tuple(x.shape[-2:])}")
        return self.blocks(x)

    def extra_repr(self) -> str:
        return f"widths={self.widths}, out_channels={self.out_channels}"


@register_backbone("small_cnn", data_config=SMALL_CNN_DATA_CONFIG)
def small_cnn(weights: Union[None, str, Path, Mapping[str, Tensor]] = None,
              **kwargs: Any) -> SmallCNN:
    """Small CNN for the synthetic-scenes demo (:math:`D = 128` by default); see
    :class:`SmallCNN`."""
    return SmallCNN(weights=weights, **kwargs)
