r"""Any ``timm`` CNN as a backbone (``build_backbone("timm:<model>")``), e.g. IML-GCN's
TResNet-M (``timm:tresnet_m``, :math:`D = 2048`). Needs ``pip install pyg_mlic[timm]``.

The TResNets of Ridnik et al. (WACV 2021), the backbones of ASL and IML-GCN, are also
registered under plain names (:data:`TIMM_ALIASES`):

==============  ==============  =====  ================================================
name            timm model      D      parameters without classifier (random init)
==============  ==============  =====  ================================================
``tresnet_m``   ``tresnet_m``   2048   29.34 M (+ 0.16 M for an 80-class linear head)
``tresnet_l``   ``tresnet_l``   2432   53.56 M (+ 0.19 M for an 80-class linear head)
``tresnet_xl``  ``tresnet_xl``  2656   75.78 M
==============  ==============  =====  ================================================

timm >= 0.9 implements TResNet with its own fused BatchNorm + activation layers, so
the ``inplace_abn`` CUDA extension of the original code is not needed (CPU works).
TResNets expect inputs in :math:`[0, 1]` (``default_cfg["mean"] = (0, 0, 0)``,
``std = (1, 1, 1)``), not ImageNet-normalised ones. The preprocessing of every timm model
comes from its ``pretrained_cfg`` (:func:`timm_data_config`, read without creating the
model), so ``data_config("tresnet_m")`` and ``data_config("timm:<model>")`` give what the
transforms must use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from torch import Tensor, nn

from pyg_mlic.backbones.registry import (IMAGENET_MEAN, IMAGENET_STD, load_weights_into,
                                        register_backbone, register_backbone_family,
                                        resolve_weights)

#: plain backbone names that build a :class:`TimmBackbone` (``name -> timm model name``)
TIMM_ALIASES: Dict[str, str] = {"tresnet_m": "tresnet_m", "tresnet_l": "tresnet_l",
                                "tresnet_xl": "tresnet_xl"}


def _import_timm(model_name: str):
    try:
        import timm
    except ImportError as e:
        raise ImportError(f"backbone 'timm:{model_name}' needs timm: "
                          "pip install pyg_mlic[timm]") from e
    return timm


def _preprocessing(cfg: Mapping[str, Any], model_name: str) -> Dict[str, Any]:
    tag = cfg.get("tag")
    arch = cfg.get("architecture") or model_name
    return {"mean": tuple(cfg.get("mean", IMAGENET_MEAN)),
            "std": tuple(cfg.get("std", IMAGENET_STD)),
            "input_size": tuple(cfg.get("input_size", (3, 224, 224))),
            "interpolation": cfg.get("interpolation", "bilinear"),
            "source": f"timm pretrained_cfg {arch}{'.' + tag if tag else ''}"}


def timm_data_config(model_name: str) -> Dict[str, Any]:
    """Mean, std, input size and interpolation of timm model ``model_name`` (a name with an
    optional ``.tag``), from timm's ``pretrained_cfg`` without creating the model.

    Raises:
        ImportError: timm is not installed.
        ValueError: timm has no such model.
    """
    timm = _import_timm(model_name)
    cfg = timm.get_pretrained_cfg(model_name) if hasattr(timm, "get_pretrained_cfg") else None
    if cfg is None:
        if not timm.is_model(model_name):
            close = timm.list_models(f"*{model_name}*")[:10]
            raise ValueError(f"unknown timm model {model_name!r}"
                             + (f"; similar names: {close}" if close else ""))
        cfg = timm.create_model(model_name, pretrained=False).pretrained_cfg
    return _preprocessing(cfg if isinstance(cfg, Mapping) else cfg.to_dict(), model_name)


@register_backbone_family("timm", data_config=timm_data_config)
class TimmBackbone(nn.Module):
    r"""A ``timm`` model without its classifier and pooling: ``forward_features``.

    .. math::
        \mathbf{F} = f_{cnn}(\mathbf{I}; \theta_{cnn}) \in \mathbb{R}^{B \times D \times h \times w}

    Args:
        model_name (str): a timm model name (``timm.list_models()``); convolutional models
            only (the features must be a map :math:`(B, D, h, w)`).
        weights: :obj:`None` (random init), a local checkpoint of the full timm model
            (classifier entries are ignored) or of this module, a state dict, or
            ``"imagenet"`` (timm's pretrained weights: read from the Hugging Face cache or
            downloaded when the machine has network).
        **kwargs: passed to :func:`timm.create_model`.

    Attributes:
        model (nn.Module): the timm model, its classifier removed (``num_classes=0``).

    Shapes:
        - **input:** :math:`(B, 3, H, W)`
        - **output:** :math:`(B, D, h, w)`
    """

    def __init__(self, model_name: str,
                 weights: Union[None, str, Path, Mapping[str, Tensor]] = None,
                 **kwargs: Any) -> None:
        super().__init__()
        timm = _import_timm(model_name)
        if not timm.is_model(model_name):
            close = timm.list_models(f"*{model_name}*")[:10]
            raise ValueError(f"unknown timm model {model_name!r}"
                             + (f"; similar names: {close}" if close else ""))
        resolved = resolve_weights(weights, ("imagenet",))
        pretrained = resolved == "imagenet"
        try:
            self.model = timm.create_model(model_name, pretrained=pretrained, num_classes=0,
                                           global_pool="", **kwargs)
        except Exception as e:
            if pretrained:
                raise RuntimeError(f"could not obtain timm's pretrained weights for "
                                   f"{model_name!r} ({e}); on a machine without network pass a "
                                   "local checkpoint: weights='/path/to/file.pth'") from e
            raise
        source: Optional[str] = f"timm pretrained {model_name}" if pretrained else None
        if isinstance(resolved, dict):
            source = str(weights) if not isinstance(weights, Mapping) else "(state dict)"
            classifier = self.model.pretrained_cfg.get("classifier") or ()
            if isinstance(classifier, str):
                classifier = (classifier,)
            state = {k[len("model."):] if k.startswith("model.") else k: v
                     for k, v in resolved.items()}
            load_weights_into(self.model, state, source,
                              ignore_prefixes=tuple(f"{c}." for c in classifier))
        self.model_name = model_name
        self.out_channels: int = int(self.model.num_features)
        cfg = _preprocessing(self.model.pretrained_cfg, model_name)
        self.default_cfg: Dict[str, Any] = {
            "input_size": cfg["input_size"], "mean": cfg["mean"], "std": cfg["std"],
            "weights": source,
        }

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"TimmBackbone expects images [B, C, H, W], got {tuple(x.shape)}")
        out = self.model.forward_features(x)
        if out.dim() != 4 or out.size(1) != self.out_channels:
            raise ValueError(f"timm model {self.model_name!r} gives features of shape "
                             f"{tuple(out.shape)}, not a map [B, {self.out_channels}, h, w]; "
                             "use a convolutional model")
        return out

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, out_channels={self.out_channels}"


def _alias_builder(name: str, timm_name: str):
    def build(weights: Union[None, str, Path, Mapping[str, Tensor]] = None,
              **kwargs: Any) -> TimmBackbone:
        return TimmBackbone(timm_name, weights=weights, **kwargs)

    build.__name__ = name
    build.__qualname__ = name
    build.__doc__ = (f"``{name}``: timm's ``{timm_name}`` as a :class:`TimmBackbone` "
                     "(``weights``: None, a local file / state dict, or 'imagenet').")
    return build


for _name, _timm_name in TIMM_ALIASES.items():
    register_backbone(_name, data_config=lambda n=_timm_name: timm_data_config(n))(
        _alias_builder(_name, _timm_name))
