"""Cost of graph heads relative to the backbone, and of the PyG layer relative to
a dense matmul (ML-GCN; IA-GCN and GM-MLIC join as they land).

ML-GCN head at C=80, d=300, D=2048, batch 32, forward + backward: classifier
generation (2 label-GCN layers 300 -> 1024 -> 2048 over COCO's real re-weighted
graph) + logits ``x W^T``. Reference 1: ResNet-101 forward + backward at 448x448
on the same batch — measured on a smaller batch (``--backbone-batch``, default 2)
and scaled linearly to 32 (said in the output; CPU time is linear in the batch at
this size). Goal: head <= 0.5 % of the backbone. Reference 2: the same two
layers as dense matmuls ``P (H W)``; goal: PyG layers <= 1.5x dense.

Run: ``python benchmarks/bench_heads.py [--quick]``.
"""
from __future__ import annotations

import argparse
import json
from typing import Dict

import numpy as np
import torch

from _common import data_dir, machine, time_interleaved


def _coco_graph():
    from pyg_mlic.graphs import LabelGraph

    path = data_dir() / "reference" / "mlgcn_coco_adj.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as d:
            return LabelGraph.from_counts(d["adj"], d["nums"], classes=[str(c) for c in d["classes"]],
                                          tau=0.4, p=0.2, scheme="reweighted"), "COCO train2014 (real)"
    rng = np.random.default_rng(0)
    Y = (rng.random((5000, 80)) < 0.05).astype(np.uint8)
    return LabelGraph.from_labels(Y, tau=0.4, p=0.2), "random labels (shared data not found)"


def bench_mlgcn(batch: int = 32, backbone_batch: int = 2, image: int = 448,
                repeats: int = 5) -> Dict[str, object]:
    from torchvision.models import resnet101

    from pyg_mlic.models.ml_gcn import ClassifierGCN

    g, graph_src = _coco_graph()
    C, d, D = 80, 300, 2048
    E = torch.randn(C, d)
    ei, ew = g.data.edge_index, g.data.edge_weight
    gcn = ClassifierGCN(d, [1024], D)
    x = torch.randn(batch, D)
    P = g.propagation()
    W1 = gcn.convs[0].lin.weight.detach().clone().requires_grad_(True)
    W2 = gcn.convs[1].lin.weight.detach().clone().requires_grad_(True)
    act = torch.nn.LeakyReLU(0.2)

    def head_pyg():
        W = gcn(E, ei, ew)
        (x @ W.t()).sum().backward()

    def head_dense():
        W = P @ (act(P @ (E @ W1.t())) @ W2.t())
        (x @ W.t()).sum().backward()

    net = resnet101(weights=None)
    imgs = torch.randn(backbone_batch, 3, image, image)

    def backbone():
        net(imgs).sum().backward()
        net.zero_grad(set_to_none=True)

    t_heads = time_interleaved({"pyg": head_pyg, "dense": head_dense}, repeats=repeats * 4)
    t_bb = time_interleaved({"backbone": backbone}, repeats=max(2, repeats // 2))["backbone"]
    t_bb_scaled = t_bb * batch / backbone_batch
    return {
        "graph": graph_src, "edges": int(ei.size(1)), "batch": batch,
        "head_pyg_s": t_heads["pyg"], "head_dense_s": t_heads["dense"],
        "backbone_s_measured": t_bb, "backbone_batch_measured": backbone_batch,
        "backbone_s_scaled_to_batch": t_bb_scaled, "image_size": image,
        "head_over_backbone_pct": 100 * t_heads["pyg"] / t_bb_scaled,
        "pyg_over_dense": t_heads["pyg"] / t_heads["dense"],
    }


def run(quick: bool = False) -> Dict[str, object]:
    torch.manual_seed(0)
    res = {"machine": machine(),
           "ml_gcn": bench_mlgcn(backbone_batch=1 if quick else 2, repeats=3 if quick else 5)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    r = run(args.quick)
    m = r["ml_gcn"]
    print(f"ML-GCN head (C=80, d=300 -> 1024 -> D=2048, batch {m['batch']}, fwd+bwd, "
          f"graph {m['graph']}, {m['edges']} edges)")
    print(f"  PyG head            {1e3 * m['head_pyg_s']:9.2f} ms")
    print(f"  dense head          {1e3 * m['head_dense_s']:9.2f} ms")
    print(f"  ResNet-101 {m['image_size']}px   {1e3 * m['backbone_s_measured']:9.1f} ms for batch "
          f"{m['backbone_batch_measured']} -> {1e3 * m['backbone_s_scaled_to_batch']:.0f} ms scaled "
          f"to batch {m['batch']}")
    print(f"  head / backbone     {m['head_over_backbone_pct']:9.3f} %   (goal <= 0.5 %)")
    print(f"  PyG / dense         {m['pyg_over_dense']:9.2f} x   (goal <= 1.5x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
