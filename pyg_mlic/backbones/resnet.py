r"""ResNet-50/101 feature extractors (torchvision), the CNN of ML-GCN and A-GCN.

ML-GCN (Chen et al., CVPR 2019, Sec. 3.3) takes ResNet-101's ``conv5_x`` output
:math:`f_{cnn}(I; \theta_{cnn}) \in \mathbb{R}^{2048 \times 14 \times 14}` for a
:math:`448 \times 448` image and global-max-pools it (Eq. 3). The classification layer
``fc`` and torchvision's average pooling are removed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from torch import Tensor, nn

from pyg_mlic.backbones.registry import (
    load_weights_into,
    register_backbone,
    resolve_weights,
)

#: Names accepted for ``weights`` besides a file: torchvision's ImageNet weights, read
#: from the torch hub cache (``$TORCH_HOME/hub/checkpoints``) or downloaded when the
#: machine has network. ``"imagenet"`` is ``IMAGENET1K_V1``, the weights ML-GCN used.
RESNET_WEIGHT_NAMES = ("imagenet", "IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT")


def resnet_data_config(depth: int) -> Dict[str, Any]:
    """The preprocessing of torchvision's ResNet ImageNet weights, read from the weights
    enum (``ResNet{depth}_Weights.IMAGENET1K_V1.transforms()``: the V1 weights ML-GCN used;
    V2 has the same mean/std), at the papers' input side of 448 px."""
    from torchvision.models import get_weight

    tag = f"ResNet{depth}_Weights.IMAGENET1K_V1"
    tf = get_weight(tag).transforms()
    return {"mean": tuple(tf.mean), "std": tuple(tf.std), "input_size": (3, 448, 448),
            "interpolation": tf.interpolation.value, "source": f"torchvision {tag}"}


def _torchvision_state_dict(depth: int, name: str) -> Dict[str, Tensor]:
    from torchvision.models import get_weight

    tag = "IMAGENET1K_V1" if name.lower() == "imagenet" else name.upper()
    enum = get_weight(f"ResNet{depth}_Weights.{tag}")
    try:
        return enum.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # URLError, OSError: no network and nothing cached
        raise RuntimeError(
            f"could not obtain torchvision weights ResNet{depth}_Weights.{tag} ({e}). They are "
            f"read from the torch hub cache or downloaded from {enum.url}; on a machine "
            "without network download that file elsewhere and pass weights='/path/to/file.pth'"
        ) from e


class ResNetBackbone(nn.Module):
    r"""ResNet-50/101 up to ``conv5_x`` (``layer4``): images to feature maps.

    .. math::
        \mathbf{F} = f_{cnn}(\mathbf{I}; \theta_{cnn}) \in
        \mathbb{R}^{B \times 2048 \times \lceil H/32 \rceil \times \lceil W/32 \rceil}

    Submodules keep torchvision's names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so a
    torchvision state dict loads as is (its ``fc.*`` entries are ignored) and this
    module's own ``state_dict()`` loads back.

    Args:
        depth (int): 50 or 101. (default: :obj:`50`)
        weights: :obj:`None` (random init), a local ``.pth``/``.safetensors`` state dict,
            a state dict, or one of :data:`RESNET_WEIGHT_NAMES`.
        **kwargs: passed to :func:`torchvision.models.resnet50`/``resnet101``
            (e.g. ``replace_stride_with_dilation``, ``norm_layer``).

    Shapes:
        - **input:** :math:`(B, 3, H, W)`
        - **output:** :math:`(B, 2048, H/32, W/32)` (rounded up)
    """

    def __init__(self, depth: int = 50,
                 weights: Union[None, str, Path, Mapping[str, Tensor]] = None,
                 **kwargs: Any) -> None:
        super().__init__()
        import torchvision

        builders = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}
        if depth not in builders:
            raise ValueError(f"ResNetBackbone: depth must be 50 or 101, got {depth}")
        for k in ("weights", "pretrained", "num_classes"):
            if k in kwargs:
                raise TypeError(f"ResNetBackbone: unexpected argument {k!r}")
        net = builders[depth](weights=None, **kwargs)
        resolved = resolve_weights(weights, RESNET_WEIGHT_NAMES)
        source: Optional[str] = None
        if isinstance(resolved, str):
            state = _torchvision_state_dict(depth, resolved)
            source = f"torchvision ResNet{depth} {resolved}"
        elif resolved is not None:
            state = resolved
            source = str(weights) if not isinstance(weights, Mapping) else "(state dict)"
        if source is not None:
            load_weights_into(net, state, source, ignore_prefixes=("fc.",))
        self.depth = depth
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (net.layer1, net.layer2,
                                                              net.layer3, net.layer4)
        self.out_channels: int = int(net.fc.in_features)
        cfg = resnet_data_config(depth)
        self.default_cfg: Dict[str, Any] = {
            "input_size": cfg["input_size"], "mean": cfg["mean"], "std": cfg["std"],
            "weights": source, "stride": 32,
        }

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.size(1) != self.conv1.in_channels:
            raise ValueError(f"ResNetBackbone expects images [B, {self.conv1.in_channels}, H, W], "
                             f"got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, out_channels={self.out_channels}"


@register_backbone("resnet50", data_config=lambda: resnet_data_config(50))
def resnet50(weights: Union[None, str, Path, Mapping[str, Tensor]] = None,
             **kwargs: Any) -> ResNetBackbone:
    """ResNet-50 feature extractor (:math:`D = 2048`); see :class:`ResNetBackbone`."""
    return ResNetBackbone(50, weights=weights, **kwargs)


@register_backbone("resnet101", data_config=lambda: resnet_data_config(101))
def resnet101(weights: Union[None, str, Path, Mapping[str, Tensor]] = None,
              **kwargs: Any) -> ResNetBackbone:
    """ResNet-101 feature extractor (:math:`D = 2048`), ML-GCN's CNN; see
    :class:`ResNetBackbone`."""
    return ResNetBackbone(101, weights=weights, **kwargs)
