"""LabelGCNConv (ML-GCN Eq. 2): the given propagation weights, edge list vs adj_t, a dense
equivalent, PyG's gcn_norm for a raw adjacency."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch_geometric.nn import GCNConv
from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor
from torch_geometric.utils import to_torch_coo_tensor, to_torch_csc_tensor

from pyg_mlic.graphs import LabelGraph
from pyg_mlic.nn import LabelGCNConv

# a COO adj_t is converted to CSR by torch_geometric.utils.spmm (a warning, the case tested)
pytestmark = pytest.mark.filterwarnings("ignore:Converting sparse tensor:UserWarning",
                                        "ignore:Sparse CSC tensor support:UserWarning",
                                        "ignore:Sparse invariant checks:UserWarning")

SCHEMES = ["reweighted", "binary", "probability"]
CONVENTIONS = ["paper", "mlgcn_code"]

# 12 images x 6 labels, built by hand: {0, 1, 2} and {3, 4} co-occur, label 5 is rare and
# label 2 occurs only with 0 or 1 (asymmetric conditionals P(0|2) = 1 > P(2|0))
Y = np.array([[1, 1, 0, 0, 0, 0],
              [1, 1, 1, 0, 0, 0],
              [1, 0, 1, 0, 0, 0],
              [1, 1, 0, 0, 0, 0],
              [0, 1, 1, 0, 0, 0],
              [0, 0, 0, 1, 1, 0],
              [0, 0, 0, 1, 1, 0],
              [0, 0, 0, 1, 0, 0],
              [1, 0, 0, 0, 1, 0],
              [0, 1, 0, 1, 0, 1],
              [1, 0, 0, 0, 0, 0],
              [0, 0, 0, 0, 1, 0]], dtype=np.uint8)


def _graph(scheme="reweighted", convention="paper"):
    g = LabelGraph.from_labels(Y, classes=list("abcdef"), tau=0.4, p=0.2, scheme=scheme,
                               convention=convention)
    return g.data.edge_index, g.data.edge_weight.float(), g.propagation().float()


def _adjacencies(ei, ew, n):
    """The same graph as PyG's transposed adjacencies (``adj_t[i, j]`` = weight of j -> i)."""
    adjs = {"torch.sparse_csr": to_torch_csc_tensor(ei, ew, (n, n)).t(),
            "torch.sparse_coo": to_torch_coo_tensor(ei.flip(0), ew, (n, n))}
    if WITH_TORCH_SPARSE:
        adjs["SparseTensor"] = SparseTensor.from_edge_index(ei, ew, (n, n)).t()
    return adjs


def test_hand_built_graph_is_a_real_test_case():
    ei, ew, P = _graph()
    assert ei.size(1) > 6 and (ew > 0).all()                       # edges beyond self-loops
    assert not torch.allclose(P, P.t())                            # directed (Eq. 8 rows)
    assert (ei[0] == ei[1]).sum() == 6                             # self weight 1 - p


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("out_ch", [4, 16])  # project-then-propagate and propagate-then-project
def test_equals_dense_operator_for_edge_list_and_adj_t(scheme, convention, out_ch):
    ei, ew, P = _graph(scheme, convention)
    conv = LabelGCNConv(8, out_ch, bias=True)
    torch.nn.init.normal_(conv.bias)
    H = torch.randn(6, 8)
    ref = P @ H @ conv.lin.weight.t() + conv.bias                  # H' = P H W + b
    out = conv(H, ei, ew)
    assert out.shape == (6, out_ch)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for name, adj_t in _adjacencies(ei, ew, 6).items():
        torch.testing.assert_close(conv(H, adj_t), ref, atol=1e-5, rtol=1e-5, msg=name)


def test_edge_list_and_adj_t_give_the_same_gradients():
    ei, ew, _ = _graph()
    conv = LabelGCNConv(8, 5)
    H0 = torch.randn(6, 8)
    G = torch.randn(6, 5)
    grads = {}
    for name, graph in [("edge_index", (ei, ew))] + [
            (k, (a,)) for k, a in _adjacencies(ei, ew, 6).items()]:
        conv.zero_grad()
        H = H0.clone().requires_grad_(True)
        (conv(H, *graph) * G).sum().backward()
        grads[name] = (H.grad, conv.lin.weight.grad.clone())
    for name, (gh, gw) in grads.items():
        torch.testing.assert_close(gh, grads["edge_index"][0], atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(gw, grads["edge_index"][1], atol=1e-5, rtol=1e-5, msg=name)


def test_no_self_loops_added_and_weights_used_as_given():
    # one edge 0 -> 1 with weight 0.5, nothing else: node 0 gets nothing, node 1 gets 0.5 h_0
    conv = LabelGCNConv(2, 2)
    with torch.no_grad():
        conv.lin.weight.copy_(torch.eye(2))
    H = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    ei, w = torch.tensor([[0], [1]]), torch.tensor([0.5])
    expected = torch.tensor([[0.0, 0.0], [0.5, 1.0]])
    torch.testing.assert_close(conv(H, ei, w), expected)
    torch.testing.assert_close(conv(H, to_torch_csc_tensor(ei, w, (2, 2)).t()), expected)
    torch.testing.assert_close(conv(H, ei), torch.tensor([[0.0, 0.0], [1.0, 2.0]]))  # ones


def test_normalize_uses_gcn_norm_like_gcnconv():
    A = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # symmetric
    ei = A.nonzero().t()
    conv = LabelGCNConv(4, 3, normalize=True)
    H = torch.randn(3, 4)
    At = A + torch.eye(3)
    d = At.sum(1).pow(-0.5)
    ref = (d[:, None] * At * d[None, :]) @ H @ conv.lin.weight.t()
    torch.testing.assert_close(conv(H, ei, torch.ones(ei.size(1))), ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(conv(H, ei), ref, atol=1e-6, rtol=1e-5)
    gcn = GCNConv(4, 3, bias=False)
    gcn.lin.weight.data.copy_(conv.lin.weight.data)
    torch.testing.assert_close(conv(H, ei), gcn(H, ei), atol=1e-6, rtol=1e-5)
    adj_t = to_torch_csc_tensor(ei, size=(3, 3)).t()
    torch.testing.assert_close(conv(H, adj_t), ref, atol=1e-6, rtol=1e-5)
    # a weighted, directed raw adjacency: PyG's in-degree normalisation, identical to GCNConv
    ei2 = torch.tensor([[0, 1, 2, 2], [1, 2, 0, 1]])
    w2 = torch.tensor([0.5, 2.0, 1.0, 3.0])
    torch.testing.assert_close(conv(H, ei2, w2), gcn(H, ei2, w2), atol=1e-6, rtol=1e-5)


def test_gradients_reach_weight_and_edge_weights():
    conv = LabelGCNConv(3, 2)
    ei = torch.tensor([[0, 1, 2], [1, 2, 0]])
    w = torch.rand(3, requires_grad=True)
    conv(torch.randn(3, 3), ei, w).sum().backward()
    assert w.grad is not None and conv.lin.weight.grad is not None


def test_reset_parameters_and_repr():
    conv = LabelGCNConv(5, 3, bias=True)
    torch.nn.init.normal_(conv.bias)
    w = conv.lin.weight.clone()
    conv.reset_parameters()
    assert not torch.equal(w, conv.lin.weight) and (conv.bias == 0).all()
    assert repr(conv) == "LabelGCNConv(5, 3, normalize=False)"


_SUBPROCESS = r"""
import json, sys, torch
if sys.argv[1] == "block":
    sys.modules["torch_scatter"] = None  # make `import torch_scatter` fail
import torch_geometric.typing as T
from pyg_mlic.nn import LabelGCNConv
torch.manual_seed(0)
conv = LabelGCNConv(8, 5)
g = torch.Generator().manual_seed(1)
ei = torch.randint(0, 30, (2, 200), generator=g)
w = torch.rand(200, generator=g)
x = torch.randn(30, 8, generator=g)
out = conv(x, ei, w)
print(json.dumps({"with_scatter": bool(T.WITH_TORCH_SCATTER), "out": out.tolist()}))
"""


def test_same_result_with_and_without_torch_scatter():
    res = {}
    for mode in ("block", "allow"):
        p = subprocess.run([sys.executable, "-c", _SUBPROCESS, mode], capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        res[mode] = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["block"]["with_scatter"] is False
    try:
        import torch_scatter  # noqa: F401
        assert res["allow"]["with_scatter"] is True
    except ImportError:
        pass
    torch.testing.assert_close(torch.tensor(res["block"]["out"]), torch.tensor(res["allow"]["out"]),
                               atol=1e-6, rtol=1e-6)
