"""Graphs of pyg_mlic, as PyTorch Geometric data objects.

- :class:`LabelGraph` — the ML-GCN label graph built from training-set label
  co-occurrence (Chen et al., CVPR 2019, Sec. 3.4, Eqs. 6-8), with
  :func:`cooccurrence`, :func:`conditional_probability` and
  :func:`propagation_matrix` as the functional building blocks.
"""
from pyg_mlic.graphs.label_graph import (
    CONVENTIONS,
    SCHEMES,
    LabelGraph,
    conditional_probability,
    cooccurrence,
    propagation_matrix,
)

__all__ = [
    "LabelGraph",
    "cooccurrence",
    "conditional_probability",
    "propagation_matrix",
    "SCHEMES",
    "CONVENTIONS",
]
