"""Message-passing layers and graph modules, one per file."""
from pyg_mlic.nn.adaptive_label_graph import AdaptiveLabelGraph, sparse_correlation_loss
from pyg_mlic.nn.gnb_edge_conv import GNBEdgeConv, SplitMLP
from pyg_mlic.nn.gnb_node_conv import GNBNodeConv
from pyg_mlic.nn.graph_network_block import GraphNetworkBlock
from pyg_mlic.nn.instance_aware_label_conv import InstanceAwareLabelConv
from pyg_mlic.nn.label_gcn_conv import LabelGCNConv
from pyg_mlic.nn.variational_roi import VariationalROIWeighting

__all__ = [
    "LabelGCNConv",
    "AdaptiveLabelGraph",
    "sparse_correlation_loss",
    "InstanceAwareLabelConv",
    "VariationalROIWeighting",
    "GNBNodeConv",
    "GNBEdgeConv",
    "GraphNetworkBlock",
    "SplitMLP",
]
