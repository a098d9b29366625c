r"""Image backbones, pooling and encoders.

>>> from pyg_mlic.backbones import build_backbone, ImageEncoder
>>> enc = ImageEncoder(build_backbone("small_cnn"), pool="max")
>>> enc(torch.randn(2, 3, 64, 64)).shape                 # doctest: +SKIP
torch.Size([2, 256])

Backbones (:func:`list_backbones`): ``resnet50``, ``resnet101`` (torchvision),
``efficientnet_lite0`` (offline ImageNet weights), ``small_cnn`` (synthetic demo), and any
timm CNN as ``"timm:<name>"``. Each maps :math:`(B, 3, H, W) \to (B, D, h, w)` and has
``out_channels`` (:math:`D`) and ``default_cfg``; :func:`data_config` gives the
preprocessing (mean, std, input size) a backbone's weights expect from its name alone,
which the data transforms use. Models keep their backbone in an
attribute named ``backbone`` so the engine can give it its own learning rate.
"""
from pyg_mlic.backbones.registry import (
    build_backbone,
    data_config,
    list_backbones,
    load_state_dict_file,
    register_backbone,
    register_backbone_family,
)
from pyg_mlic.backbones.pooling import GlobalAvgPool2d, GlobalMaxPool2d, build_pool
from pyg_mlic.backbones.encoders import ImageEncoder, MLPEncoder
from pyg_mlic.backbones.resnet import ResNetBackbone
from pyg_mlic.backbones.efficientnet import (
    EfficientNetLiteBackbone,
    efficientnet_lite0_weights_path,
)
from pyg_mlic.backbones.small_cnn import SmallCNN
# registers the tresnet_* aliases and the "timm:<model>" family (timm is imported only
# when one is built)
from pyg_mlic.backbones import timm_backbone as _timm_backbone  # noqa: F401

__all__ = [
    "build_backbone",
    "data_config",
    "list_backbones",
    "register_backbone",
    "register_backbone_family",
    "load_state_dict_file",
    "GlobalMaxPool2d",
    "GlobalAvgPool2d",
    "build_pool",
    "ImageEncoder",
    "MLPEncoder",
    "ResNetBackbone",
    "EfficientNetLiteBackbone",
    "efficientnet_lite0_weights_path",
    "SmallCNN",
]
