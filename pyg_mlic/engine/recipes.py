"""Named training recipes: the settings a run uses when the user gives none.

:data:`SMALL` is the embedded default's recipe (``pyg-mlic demo``) and what
``pyg-mlic train --dataset synthetic`` uses when no other flag is given: a small CNN
trained from scratch on 64-px scenes, a few epochs of Adam, weights chosen on the
validation split. Every model trains under it in minutes on a 2-core CPU (measured by
the demo). Real datasets keep each paper's settings (each model's
``default_train_config``: ResNet-101 / TResNet at 448 px, SGD or Adam, 40-120 epochs).
"""
from __future__ import annotations

from typing import Any, Dict

#: the small recipe: ``model`` (model options), ``train`` (TrainConfig fields), ``data``
#: (dataset settings) and ``label_embeddings`` (the spec the graph methods use)
SMALL: Dict[str, Any] = {
    "model": dict(backbone="small_cnn"),
    "train": dict(epochs=5, batch_size=32, optimizer="adam", lr=2e-3, backbone_lr=2e-3,
                  weight_decay=1e-4, lr_step=None, select="best_val"),
    "data": dict(image_size=64, num_images=800),
    # one-hot: with a backbone trained from scratch for a few epochs, 50-d GloVe trained
    # ML-GCN to a lower validation mAP on the scenes (0.33 vs 0.64 after 6 epochs on 1200
    # images, measured), because near-identical word vectors start all classifiers nearly
    # equal
    "label_embeddings": "onehot",
}

__all__ = ["SMALL"]
