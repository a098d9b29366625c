"""Export a trained model for deployment (ONNX or TorchScript).

Graph-based heads that generate *static* classifiers (ML-GCN, A-GCN, IML-GCN, the
baseline) are frozen into one plain linear layer: the label graph, the label
embeddings and the GCN are evaluated once at export time, so the deployed model is
the backbone + pooling + one matmul,

.. math::
    \\hat{y} = \\mathbf{W}^{*} f(I) + \\mathbf{b}^{*}, \\qquad
    \\mathbf{W}^{*} = \\mathrm{GCN}(\\mathbf{Z}, \\mathbf{P}) \\text{ (computed once)}

Models whose classifiers depend on the image (IA-GCN, GM-MLIC) cannot be frozen
this way and raise :class:`NotImplementedError`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn


class FrozenClassifier(nn.Module):
    """``encoder`` followed by a fixed ``nn.Linear`` (the frozen classifiers).

    Args:
        encoder: module mapping the input to ``[B, D]``.
        weight: classifiers ``[C, D]``.
        bias: optional ``[C]``.
        classes: class names (kept as metadata).
    """

    def __init__(self, encoder: nn.Module, weight: Tensor, bias: Optional[Tensor] = None,
                 classes: Sequence[str] = ()):
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(weight.size(1), weight.size(0), bias=bias is not None)
        with torch.no_grad():
            self.fc.weight.copy_(weight.detach())
            if bias is not None:
                self.fc.bias.copy_(bias.detach())
        self.classes = list(classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.encoder(x))


def export_model(model, path: Union[str, os.PathLike], fmt: str = "onnx",
                 example: Optional[Tensor] = None, image_size: int = 448,
                 opset: int = 17) -> Path:
    """Write ``model`` (frozen with its ``export_module()``) as ONNX or TorchScript.

    Args:
        model: a trained :class:`~pyg_mlic.models.MultiLabelModel`.
        path: output file.
        fmt: ``"onnx"`` or ``"torchscript"``.
        example: an example input; default a ``[1, 3, image_size, image_size]`` image
            batch or a ``[1, F]`` feature batch for feature models.
        opset: ONNX opset.
    Returns:
        the written path. The ONNX graph has input ``input`` and output ``logits``
        with a dynamic batch axis.
    """
    model.eval()
    frozen = model.export_module().eval()
    if example is None:
        kw = model.build_kwargs
        if kw.get("input_kind") == "features":
            example = torch.randn(1, int(kw["in_features"]))
        else:
            example = torch.randn(1, 3, image_size, image_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        # the models' input-shape checks are constants of the trace (only the batch
        # axis is dynamic): torch's warning about them is not the user's to act on
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if fmt == "onnx":
            torch.onnx.export(frozen, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        elif fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                traced = torch.jit.trace(frozen, (example,))
            traced.save(str(path))
        else:
            raise ValueError(f"format must be 'onnx' or 'torchscript', got {fmt!r}")
    return path
