import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyg_mlic.graphs import LabelGraph
from pyg_mlic.nn import LabelGCNConv

SCHEMES = ["reweighted", "binary", "probability"]
CONVENTIONS = ["paper", "mlgcn_code"]


@pytest.fixture(scope="module")
def voc_train_labels(data_dir):
    d = np.load(data_dir / "labels" / "voc2007.npz", allow_pickle=False)
    Y = (d["labels"][d["split"] == "trainval"] == 1).astype(np.uint8)
    return Y, [str(c) for c in d["classes"]]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("out_ch", [7, 40])  # propagate-then-project and project-then-propagate
def test_equals_dense_operator(voc_train_labels, scheme, convention, out_ch):
    Y, classes = voc_train_labels
    g = LabelGraph.from_labels(Y, classes=classes, tau=0.4, p=0.2, scheme=scheme,
                               convention=convention)
    conv = LabelGCNConv(16, out_ch, bias=True)
    torch.nn.init.normal_(conv.bias)
    H = torch.randn(len(classes), 16)
    out = conv(H, g.data.edge_index, g.data.edge_weight)
    ref = g.propagation() @ H @ conv.lin.weight.t() + conv.bias
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out.shape == (len(classes), out_ch)


def test_no_self_loops_added_and_weights_used_as_given():
    # one edge 0 -> 1 with weight 0.5, nothing else: node 0 gets nothing, node 1 gets 0.5 h_0
    conv = LabelGCNConv(2, 2)
    with torch.no_grad():
        conv.lin.weight.copy_(torch.eye(2))
    H = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = conv(H, torch.tensor([[0], [1]]), torch.tensor([0.5]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0], [0.5, 1.0]]))


def test_normalize_option_matches_gcn_formula():
    A = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # symmetric
    ei = A.nonzero().t()
    conv = LabelGCNConv(4, 3, normalize=True)
    H = torch.randn(3, 4)
    At = A + torch.eye(3)
    d = At.sum(1).pow(-0.5)
    ref = (d[:, None] * At * d[None, :]) @ H @ conv.lin.weight.t()
    torch.testing.assert_close(conv(H, ei, torch.ones(ei.size(1))), ref, atol=1e-6, rtol=1e-5)


def test_gradients_reach_weight_and_edge_weights():
    conv = LabelGCNConv(3, 2)
    ei = torch.tensor([[0, 1, 2], [1, 2, 0]])
    w = torch.rand(3, requires_grad=True)
    conv(torch.randn(3, 3), ei, w).sum().backward()
    assert w.grad is not None and conv.lin.weight.grad is not None


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
