"""pyg_mlic — graph-based multi-label image classification on PyTorch Geometric.

Subpackages:

- :mod:`pyg_mlic.graphs` — label graphs (ML-GCN), instance and assignment graphs.
- :mod:`pyg_mlic.nn` — message-passing layers, one per file.
- :mod:`pyg_mlic.models` — one method per file, a registry and a baseline.
- :mod:`pyg_mlic.data` — COCO, VOC, NUS-WIDE, features, folder/CSV, synthetic scenes.
- :mod:`pyg_mlic.metrics` — mAP and the CP/CR/CF1/OP/OR/OF1 family.
- :mod:`pyg_mlic.engine` — the training/evaluation loop shared by every model.
"""
from pyg_mlic.version import __version__

__all__ = ["__version__"]
