"""Graphs of pyg_mlic, as PyTorch Geometric data objects.

- :class:`LabelGraph` — the ML-GCN label graph built from training-set label
  co-occurrence (Chen et al., CVPR 2019, Sec. 3.4, Eqs. 6-8), with
  :func:`cooccurrence`, :func:`conditional_probability` and
  :func:`propagation_matrix` as the functional building blocks.
- :func:`instance_graph` — the instance spatial graph of an image's regions (kNN over
  box centres, box-pair edge attributes; GM-MLIC Eq. 1), and its batched builders.
"""
from pyg_mlic.graphs.assignment_graph import (
    assignment_graph,
    assignment_graph_batch,
)
from pyg_mlic.graphs.instance_graph import (
    DEFAULT_K,
    instance_graph,
    instance_graph_batch,
    instance_graphs_from_regions,
)
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
    "instance_graph",
    "instance_graph_batch",
    "instance_graphs_from_regions",
    "assignment_graph",
    "assignment_graph_batch",
    "DEFAULT_K",
]
