"""Message-passing layers and graph modules, one per file."""
from pyg_mlic.nn.adaptive_label_graph import AdaptiveLabelGraph, sparse_correlation_loss
from pyg_mlic.nn.label_gcn_conv import LabelGCNConv

__all__ = ["LabelGCNConv", "AdaptiveLabelGraph", "sparse_correlation_loss"]
