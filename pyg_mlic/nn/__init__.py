"""Message-passing layers, one per file."""
from pyg_mlic.nn.label_gcn_conv import LabelGCNConv

__all__ = ["LabelGCNConv"]
