"""The plain baseline every table needs: encoder + one linear classifier."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from pyg_mlic.models.base import Batch, ModelOutput, MultiLabelModel, build_encoder
from pyg_mlic.models.registry import register_demo_row, register_model


@register_model("baseline")
class Baseline(MultiLabelModel):
    r"""Backbone, global max pooling and a linear classifier (the "ResNet-101"
    row of ML-GCN Tables 1–2).

    .. math::
        \hat{y} = W\, f_{GMP}(f_{cnn}(I)) + b

    Args:
        classes (list[str]): class names (``C``).
        input_kind (str): ``"image"`` or ``"features"``. (default: :obj:`"image"`)
        backbone (str): backbone name. (default: :obj:`"resnet101"`)
        backbone_weights (str, optional): local weights file. (default: :obj:`None`)
        pool (str): ``"max"`` or ``"avg"``. (default: :obj:`"max"`)
        in_features (int, optional): feature size for feature datasets.
        dropout (float): dropout before the classifier. (default: :obj:`0.0`)
        encoder_hidden, encoder_out, encoder_dropout, input_dropout, input_std_floor, input_clip:
            the MLP of feature datasets (see :func:`~pyg_mlic.models.build_encoder`;
            ``fit``'s features recipe sets the dropouts to 0.5 / 0.2 and the clipping to 2
            unless given).

    Shapes:
        - **input:** batch with ``image`` :math:`(B, 3, H, W)` or ``features`` :math:`(B, F)`
        - **output:** :class:`ModelOutput` with ``logits`` :math:`(B, C)`
    """

    default_train_config = dict(optimizer="sgd", lr=0.01, backbone_lr=0.001, momentum=0.9,
                                weight_decay=1e-4, lr_step=40, lr_gamma=0.1, epochs=100)

    def __init__(self, classes: Sequence[str], input_kind: str = "image",
                 backbone: str = "resnet101", backbone_weights: Optional[str] = None,
                 pool: str = "max", in_features: Optional[int] = None, dropout: float = 0.0,
                 encoder_hidden: Sequence[int] = (512,), encoder_out: int = 512,
                 encoder_dropout: float = 0.0, input_dropout: float = 0.0,
                 input_std_floor: float = 0.0, input_clip: Optional[float] = None):
        super().__init__(classes)
        self.encoder = build_encoder(input_kind, backbone=backbone,
                                     backbone_weights=backbone_weights, pool=pool,
                                     in_features=in_features, encoder_hidden=encoder_hidden,
                                     encoder_out=encoder_out, encoder_dropout=encoder_dropout,
                                     input_dropout=input_dropout,
                                     input_std_floor=input_std_floor,
                                     input_clip=input_clip)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.encoder.out_channels, self.num_classes)

    def forward(self, batch: Batch) -> ModelOutput:
        x = self.encode(batch)
        return ModelOutput(self.fc(self.dropout(x)), extras={"features": x})

    def export_module(self) -> nn.Module:
        from pyg_mlic.export import FrozenClassifier

        return FrozenClassifier(self.encoder, self.fc.weight, self.fc.bias, self.classes)


register_demo_row("baseline", "baseline")
