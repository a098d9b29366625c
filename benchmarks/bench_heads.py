"""Cost of graph and transformer heads relative to the backbone, and of the PyG layer
relative to a dense matmul or a straightforward reference (ML-GCN, ML-Decoder,
Query2Label, IA-GCN, GM-MLIC).

ML-GCN head at C=80, d=300, D=2048, batch 32, forward + backward: classifier
generation (2 label-GCN layers 300 -> 1024 -> 2048 over COCO's real re-weighted
graph) + logits ``x W^T``. Reference 1: ResNet-101 forward + backward at 448x448
on the same batch — measured on a smaller batch (``--backbone-batch``, default 2)
and scaled linearly to 32 (said in the output; CPU time is linear in the batch at
this size). Goal: head <= 0.5 % of the backbone. Reference 2: the same two
layers as dense matmuls ``P (H W)``; goal: PyG layers <= 1.5x dense.

ML-Decoder and Query2Label heads (section ``transformer_heads``), each alone: the model's
own ``decode`` with the backbone replaced by the identity, reading a ``[B, 2048, 14, 14]``
feature map (ResNet-101's at 448 px), at the defaults for ``D = 2048`` (the papers'
widths): ML-Decoder ``d = 768``, FFN 2048, 8 heads, 1 decoder layer (cross-attention
only), ``K = min(C, 100)`` fixed group queries, group FC with ``g = ceil(C / K)``;
Query2Label ``d = 2048``, FFN 8192, 4 heads, 1 encoder layer over the 196 tokens and 2
decoder layers (self- and cross-attention), one query per class. Forward + backward in
training mode (dropout on), the gradient reaching the feature map too; C in (80, 200,
500, 1000), the C-independent layers shared across the sweep (same weights, one copy in
memory; each C has its own queries and classifier). Everything is timed interleaved in
one call with ResNet-101 forward + backward at 448 px (the helper of the ML-GCN
reference): batch 1 for both in quick mode (8 passes per ML-Decoder sample: its step is
some 30x shorter), heads at batch 8 and the backbone at batch 2 in full mode; the ratios
are per image. Reported: head / backbone at each C, each head at C / itself at C = 80,
ML-Decoder / Query2Label at each C, and beside them each head's forward FLOPs over the
backbone's, counted by ``torch.utils.flop_counter`` on meta tensors (not a timing). No
goal; the expectation checked: ML-Decoder nearly flat in C (K is capped at 100, past
C = 100 only the group FC grows), Query2Label growing with C but not in proportion (its
token encoder and the keys / values of the 196 tokens do not depend on C). Measured on
this 2-core machine, quick mode (one thread, a loaded machine, two runs): head /
backbone ML-Decoder 0.030-0.031x at C = 80 and 0.035-0.038x at C = 1000, Query2Label
0.88-1.01x at C = 80 and 4.5-4.9x at C = 1000; C = 1000 / C = 80: ML-Decoder 1.16-1.24x
(forward FLOPs 1.10x), Query2Label 4.5-5.6x (forward FLOPs 6.1x); ML-Decoder /
Query2Label 0.029-0.035x at C = 80, 0.008x at C = 1000.

IA-GCN label GCN (image-dependent graph, one graph per image), dims 300 -> 512 ->
1024 -> 2048, batch 32, forward + backward of the per-image classifiers and the
logits ``M_b x_b`` (gradients reach the scores ``a`` too). Three implementations of
the same numbers, timed interleaved in the same run:

- ``pyg``: :class:`~pyg_mlic.nn.InstanceAwareLabelConv` over the sparse ``adj_t`` (its
  fused ``message_and_aggregate``) — the normalised ``A_F^b = A_S * a_b a_b^T`` factorised
  as ``diag(s_b) A_S diag(s_b)``: for C <= 128 the per-image matrices built densely and one
  batched product, else all images side by side as one ``[C, B*F]`` signal and one sparse
  CSR product per layer;
- ``loop``: a per-image loop of :class:`~pyg_mlic.nn.LabelGCNConv` with that image's
  normalised edge weights (what one writes without batching);
- ``dense``: dense batched matmuls, ``P = [B, C, C]`` built from ``a`` then ``torch.bmm``.

C = 80: COCO's real re-weighted graph (ML-GCN statistics, tau 0.4, p 0.2). C = 500: a
synthetic graph with a realistic sparsity: labels of 40,000 images are *generated*
with a co-occurrence structure (100 latent scenes, each label belongs to one; two
scenes per image; four hub labels like COCO's "person" present in 25-50 % of images;
0.2 % noise) and thresholded exactly like COCO (tau 0.4, p 0.2); the script prints
its mean number of neighbours per node next to COCO's. Goals: C=80 ``pyg`` <= 1.1x
``dense`` and >= 1.4x faster than ``loop``; C=500 >= 3x faster than ``dense``. Peak
memory: growth of the peak resident set size of a fresh process
running one forward + backward after its setup: the high-water mark ``VmHWM`` is reset
through ``/proc/self/clear_refs`` after the setup and read after the step, minus the
``VmRSS`` before it (Linux only; torch's CPU allocations are not seen by
``tracemalloc``).

Also measured in the same run: ``pyg_logits`` / ``dense_logits``, the logits as
:meth:`IAGCN.global_logits` computes them (the last, linear layer applied to
``W_L x_b`` first, so the ``[B, C, 2048]`` classifiers are never built), and the
propagation alone (``A_F^b H_b`` for ``H`` ``[B, C, 1024]``, sparse vs dense bmm), and
``floor``: the same per-image linear maps with no graph at all, which every implementation
that materialises ``M_b`` must pay; ``dense / floor`` is the largest speed-up over the dense
reference that any propagation could give like for like.

Where the time goes: the label GCN's linear maps (``B*C*F_in*F_out`` per layer) are
the same in all three implementations and dominate: per layer the dense propagation
adds ``B*C*C*F_in``, i.e. a fraction ``C / F_out`` of the linear cost (0.04-0.16 at
C=80, 0.25-1 at C=500), which bounds what a sparse propagation can save on the whole
head (about 1.5x at C=500 with the classifiers materialised). On a CPU the sparse
propagation is itself bound by memory traffic (the per-image scalings and their
gradients are elementwise passes over ``[C, B, F]`` tensors), not by its ``|E| B F``
flops.

GM-MLIC graph network block (8 images x 35 instances x 80 labels, ROI 1024-d and
2048-d, fwd+bwd): the fast dense path against a per-image reference built by
concatenation; the workload, the method and the memory measurement are in
``bench_gm_mlic.py``, which this script runs as its ``gm_mlic`` section.

Run: ``python benchmarks/bench_heads.py [--quick] [--threads N] [--only SECTION ...]``
(sections: ``ml_gcn``, ``transformer_heads``, ``ia_gcn``, ``gm_mlic``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from _common import data_dir, machine, ratio, time_interleaved, write_results


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


def _backbone_fn(batch: int, image: int = 448) -> Callable[[], None]:
    """ResNet-101 (torchvision, random weights) forward + backward of ``batch`` random
    ``image`` x ``image`` images: the reference of every head / backbone ratio."""
    from torchvision.models import resnet101

    net = resnet101(weights=None)
    imgs = torch.randn(batch, 3, image, image)

    def backbone():
        net(imgs).sum().backward()
        net.zero_grad(set_to_none=True)

    return backbone


def bench_mlgcn(batch: int = 32, backbone_batch: int = 2, image: int = 448,
                repeats: int = 5) -> Dict[str, object]:
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

    backbone = _backbone_fn(backbone_batch, image)
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


# ----------------------------------------------------------------------------- ML-Decoder, Q2L
#: the numbers of classes of the sweep (COCO's 80 first: the growth ratios divide by it)
TRANSFORMER_CLASSES = (80, 200, 500, 1000)
#: ``name -> label`` of the transformer heads timed
TRANSFORMER_HEADS = {"ml_decoder": "ML-Decoder", "q2l": "Query2Label"}


class _FeatureMapInput(torch.nn.Module):
    """Stands in for the backbone: the input *is* the ``[B, D, h, w]`` feature map, so the
    model's own ``decode`` runs its head alone (tokens, attention layers, classifier)."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = int(out_channels)

    def forward(self, x):
        return x


def _transformer_heads(C: int, shared: Optional[Dict[str, torch.nn.Module]] = None,
                       options: Optional[Dict[str, Dict[str, object]]] = None
                       ) -> Dict[str, torch.nn.Module]:
    """``{"ml_decoder", "q2l"}`` built by the registry at their defaults for ResNet's
    :math:`D = 2048` channels (``options[name]``: other model options, e.g. small widths for
    a test), with :class:`_FeatureMapInput` as their backbone (given to the constructor in
    place of :func:`~pyg_mlic.backbones.build_backbone`'s network, so no ResNet is built
    and thrown away).

    ``shared`` (the heads of another C): the layers that do not depend on C (tokens,
    Q2L's token encoder, the decoder layers) are taken from it, so the sweep holds one
    copy of those weights; each C keeps its own queries and classifier."""
    from unittest import mock

    from pyg_mlic import backbones
    from pyg_mlic.models import build_model

    classes = [f"class_{i}" for i in range(C)]
    out = {}
    for name in TRANSFORMER_HEADS:
        with mock.patch.object(backbones, "build_backbone",
                               lambda *a, **k: _FeatureMapInput(2048)):
            m = build_model(name, classes=classes, backbone="resnet101",
                            **(options or {}).get(name, {}))
        assert isinstance(m.encoder.backbone, _FeatureMapInput)
        if shared is not None:
            for part in ("tokens", "token_encoder", "decoder"):
                if hasattr(m, part):
                    setattr(m, part, getattr(shared[name], part))
        m.train()                                                    # dropout on: training
        out[name] = m
    return out


def _head_fn(model: torch.nn.Module, fmap: torch.Tensor, steps: int = 1
             ) -> Callable[[], None]:
    """``steps`` forward + backward passes of the head alone on ``fmap`` (one timed
    sample; divide its time by ``steps``); the gradient reaches the feature map too (what
    training sends back into the backbone)."""
    def step():
        for _ in range(steps):
            x = fmap.detach().requires_grad_(True)
            model.logits_from_input(x).sum().backward()
            model.zero_grad(set_to_none=True)

    return step


def _forward_flops(module: torch.nn.Module, shape: Tuple[int, ...]) -> int:
    """Forward FLOPs of ``module`` on an input of ``shape``, counted by
    :class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and convolutions),
    run with ``meta`` copies of its parameters and buffers
    (:func:`torch.func.functional_call`) on a ``meta`` input: nothing is computed."""
    from torch.utils.flop_counter import FlopCounterMode

    state = {k: torch.empty_like(v, device="meta")
             for k, v in module.state_dict(keep_vars=True).items()}
    with FlopCounterMode(display=False) as counter:
        torch.func.functional_call(module, state, (torch.empty(*shape, device="meta"),))
    return int(counter.get_total_flops())


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in m.named_parameters() if not n.startswith("encoder."))


def bench_transformer_heads(batch: int = 8, backbone_batch: int = 2, image: int = 448,
                            repeats: int = 5, classes: Tuple[int, ...] = TRANSFORMER_CLASSES,
                            options: Optional[Dict[str, Dict[str, object]]] = None,
                            ml_decoder_steps: int = 1) -> Dict[str, object]:
    """ML-Decoder and Query2Label heads (fwd+bwd on a ``[batch, 2048, image/32, image/32]``
    feature map) against ResNet-101 fwd+bwd at ``image`` px, for each C of ``classes``:
    all timed interleaved in one :func:`time_interleaved` call. ``options``: model options
    of the heads (default: none, the paper widths). ``ml_decoder_steps``: passes per timed
    sample of ML-Decoder, whose step is some 30x shorter than Query2Label's: several keep
    the timer's and the background load's share of it small (times are per pass)."""
    from torchvision.models import resnet101

    from pyg_mlic.models.q2l import InputToLogits

    if classes[0] != 80:
        raise ValueError(f"the sweep starts at C = 80 (the growth ratios' base), got {classes}")
    hw = image // 32                                     # ResNet-101's stride: 448 -> 14
    torch.manual_seed(0)
    fns: Dict[str, Callable[[], None]] = {"backbone": _backbone_fn(backbone_batch, image)}
    rows, models, shared, fmap = [], [], None, None
    for C in classes:
        heads = _transformer_heads(C, shared, options)
        if shared is None:
            shared = heads
            D = int(heads["q2l"].encoder.out_channels)
            fmap = torch.randn(batch, D, hw, hw)
        for name, m in heads.items():
            n = ml_decoder_steps if name == "ml_decoder" else 1
            fns[f"{name}[C={C}]"] = _head_fn(m, fmap, n)
            row = {"head": name, "C": C, "params_without_backbone": _n_params(m),
                   "passes_per_sample": n}
            if name == "ml_decoder":
                row.update(K=m.num_groups, g=m.group_size, embed_dim=m.embed_dim,
                           ffn_dim=m.ffn_dim, heads=m.heads, decoder_layers=len(m.decoder))
            else:
                row.update(queries=C, hidden_dim=m.hidden_dim, ffn_dim=m.ffn_dim,
                           heads=m.heads, encoder_layers=len(m.token_encoder),
                           decoder_layers=len(m.decoder))
            rows.append(row)
            models.append(m)
    with torch.device("meta"):
        bb_flops = _forward_flops(resnet101(weights=None), (1, 3, image, image))
    for row, m in zip(rows, models):
        f = _forward_flops(InputToLogits(m), (1, D, hw, hw))
        row.update(fwd_gflops_per_image=f / 1e9, fwd_flops_over_backbone=f / bb_flops)
    t = time_interleaved(fns, repeats=repeats)
    for row in rows:                                     # seconds per forward + backward
        t[f"{row['head']}[C={row['C']}]"] /= row["passes_per_sample"]
    bb_per_image = t["backbone"] / backbone_batch
    base = {name: t[f"{name}[C={classes[0]}]"] for name in TRANSFORMER_HEADS}
    for row in rows:
        s = t[f"{row['head']}[C={row['C']}]"]
        row.update(time_s=s, time_per_image_s=s / batch,
                   head_over_backbone=(s / batch) / bb_per_image,
                   over_C80=s / base[row["head"]])
    by = {(r["head"], r["C"]): r for r in rows}
    return {
        "feature_map": [batch, D, hw, hw], "image_size": image, "batch": batch,
        "classes": list(classes), "repeats": repeats,
        "backbone_s_measured": t["backbone"], "backbone_batch_measured": backbone_batch,
        "backbone_s_per_image": bb_per_image,
        "backbone_s_scaled_to_batch": bb_per_image * batch,
        "backbone_fwd_gflops_per_image": bb_flops / 1e9,
        "rows": rows,
        "ml_decoder_over_q2l": {str(C): by["ml_decoder", C]["time_s"] / by["q2l", C]["time_s"]
                                for C in classes},
    }


def _print_transformer_heads(m) -> None:
    b, bb = m["batch"], m["backbone_batch_measured"]
    n = next(r["passes_per_sample"] for r in m["rows"] if r["head"] == "ml_decoder")
    print(f"Transformer heads alone, fwd+bwd on a {'x'.join(map(str, m['feature_map']))} "
          f"feature map (ResNet-101 at {m['image_size']}px), {m['repeats']} interleaved "
          f"repeats (ML-Decoder: {n} passes per sample)")
    print(f"  ResNet-101 {m['image_size']}px fwd+bwd {1e3 * m['backbone_s_measured']:9.1f} ms "
          f"for batch {bb} -> {1e3 * m['backbone_s_per_image']:.0f} ms per image "
          f"(forward {m['backbone_fwd_gflops_per_image']:.1f} GFLOPs per image, counted)")
    for name, label in TRANSFORMER_HEADS.items():
        r0 = next(r for r in m["rows"] if r["head"] == name)
        if name == "ml_decoder":
            shape = (f"d={r0['embed_dim']}, FFN {r0['ffn_dim']}, {r0['heads']} heads, "
                     f"{r0['decoder_layers']} decoder layer(s), K=min(C,100)")
        else:
            shape = (f"d={r0['hidden_dim']}, FFN {r0['ffn_dim']}, {r0['heads']} heads, "
                     f"{r0['encoder_layers']} encoder + {r0['decoder_layers']} decoder "
                     f"layers, C queries")
        print(f"  {label} ({shape}), batch {b}:")
        print(f"    {'C':>5} {'queries':>8} {'params':>8} {'ms':>10} {'ms/img':>9} "
              f"{'/ backbone':>11} {'/ C=80':>7}   fwd GFLOPs/img (/ backbone's)")
        for r in (r for r in m["rows"] if r["head"] == name):
            nq = r["K"] if name == "ml_decoder" else r["queries"]
            print(f"    {r['C']:>5} {nq:>8} {r['params_without_backbone'] / 1e6:7.1f}M "
                  f"{1e3 * r['time_s']:10.1f} {1e3 * r['time_per_image_s']:9.1f} "
                  f"{r['head_over_backbone']:10.3f}x {r['over_C80']:6.2f}x   "
                  f"{r['fwd_gflops_per_image']:7.1f} ({r['fwd_flops_over_backbone']:.3f}x)")
    print("  ML-Decoder / Query2Label: " + ", ".join(
        f"C={C} {v:.3f}x" for C, v in m["ml_decoder_over_q2l"].items()))


# ----------------------------------------------------------------------------- IA-GCN
IA_DIMS = (300, 512, 1024, 2048)


def _synthetic_labels(C: int = 500, N: int = 40000, seed: int = 0, scenes: int = 100):
    """Labels with a co-occurrence structure (see the module docstring)."""
    rng = np.random.default_rng(seed)
    home = rng.integers(0, scenes, C)                  # each label lives in one scene
    q = rng.uniform(0.05, 0.6, C)                      # P(label | its scene is present)
    hub_p = np.array([0.5, 0.3, 0.3, 0.25])            # "person"-like labels
    hubs = rng.choice(C, len(hub_p), replace=False)
    Y = np.zeros((N, C), np.uint8)
    sc = rng.integers(0, scenes, (N, 2))               # two scenes per image
    for k in range(2):
        Y |= ((home[None, :] == sc[:, k:k + 1]) & (rng.random((N, C)) < q[None, :])).astype(
            np.uint8)
    Y[:, hubs] |= (rng.random((N, len(hubs))) < hub_p).astype(np.uint8)
    Y |= (rng.random((N, C)) < 0.002).astype(np.uint8)
    return Y


def _ia_graph(C: int):
    from pyg_mlic.graphs import LabelGraph

    if C == 80:
        g, src = _coco_graph()
    else:
        g = LabelGraph.from_labels(_synthetic_labels(C), tau=0.4, p=0.2)
        src = f"synthetic structured labels (C={C}, 40,000 images, tau 0.4, p 0.2)"
    ei = g.data.edge_index
    nbrs = float((ei[0] != ei[1]).sum()) / C
    return g, src, nbrs


def _ia_setup(C: int, batch: int, seed: int = 0):
    """Everything the three implementations share: graph, embeddings, weights, a, x."""
    from pyg_mlic.nn import InstanceAwareLabelConv

    torch.manual_seed(seed)
    g, src, nbrs = _ia_graph(C)
    ei, ew = g.data.edge_index, g.data.edge_weight.float()
    convs = torch.nn.ModuleList(InstanceAwareLabelConv(a, b)
                                for a, b in zip(IA_DIMS[:-1], IA_DIMS[1:]))
    E = torch.randn(C, IA_DIMS[0])
    x = torch.randn(batch, IA_DIMS[-1])
    a0 = torch.rand(batch, C)
    return dict(g=g, src=src, nbrs=nbrs, ei=ei, ew=ew, convs=convs, E=E, x=x, a0=a0,
                A_S=g.propagation())


def _ia_fns(st) -> Dict[str, Callable[[], None]]:
    from pyg_mlic.nn import LabelGCNConv
    from pyg_mlic.nn.instance_aware_label_conv import (instance_aware_scaling,
                                                       label_adjacency_csr)

    ei, ew, convs, E, x, a0, A_S = (st[k] for k in ("ei", "ew", "convs", "E", "x", "a0", "A_S"))
    C, B = E.size(0), x.size(0)
    Ws = [c.lin.weight for c in convs]
    loop_convs = torch.nn.ModuleList(LabelGCNConv(a, b) for a, b in zip(IA_DIMS[:-1], IA_DIMS[1:]))
    for lc, c in zip(loop_convs, convs):
        lc.lin.weight = c.lin.weight                     # the same parameters
    relu = torch.relu

    def pyg():
        a = a0.clone().requires_grad_(True)
        adj = label_adjacency_csr(ei, ew, C)
        s = instance_aware_scaling(a, ei, ew, C, adj)
        h = E
        for i, conv in enumerate(convs):
            h = conv(h, adj, scaling=s)                  # adj_t: fused propagation
            h = relu(h) if i < len(convs) - 1 else h
        torch.einsum("bcd,bd->bc", h, x).sum().backward()

    def loop():
        a = a0.clone().requires_grad_(True)
        adj = label_adjacency_csr(ei, ew, C)
        s = instance_aware_scaling(a, ei, ew, C, adj)   # per-image normalised weights
        out = []
        for b in range(B):
            w_b = s[b, ei[1]] * ew * s[b, ei[0]]
            h = E
            for i, conv in enumerate(loop_convs):
                h = conv(h, ei, w_b)
                h = relu(h) if i < len(loop_convs) - 1 else h
            out.append(h @ x[b])
        torch.stack(out).sum().backward()

    def dense():
        a = a0.clone().requires_grad_(True)
        AF = A_S[None] * a[:, :, None] * a[:, None, :]   # [B, C, C]
        d = AF.sum(2)
        inv = torch.where(d > 1e-12, d.clamp_min(1e-12).rsqrt(), torch.zeros_like(d))
        P = inv[:, :, None] * AF * inv[:, None, :]
        h = torch.bmm(P, (E @ Ws[0].t()).expand(B, -1, -1))    # shared input: lin first
        for W in Ws[1:]:
            h = torch.bmm(P, relu(h)) @ W.t()                    # widening: propagate first
        torch.einsum("bcd,bd->bc", h, x).sum().backward()

    def pyg_logits():                                    # what IAGCN.global_logits does
        a = a0.clone().requires_grad_(True)
        adj = label_adjacency_csr(ei, ew, C)
        s = instance_aware_scaling(a, ei, ew, C, adj)
        h = E
        for conv in convs[:-1]:
            h = relu(conv(h, adj, scaling=s))
        u = torch.einsum("bcf,bf->bc", h, x @ Ws[-1])
        convs[-1].propagate(adj, x=u.unsqueeze(-1), edge_weight=None,
                           s=s.unsqueeze(-1)).sum().backward()

    def dense_logits():                                  # the same associativity, dense P
        a = a0.clone().requires_grad_(True)
        P = _dense_P(a)
        h = relu(torch.bmm(P, (E @ Ws[0].t()).expand(B, -1, -1)))
        h = relu(torch.bmm(P, h) @ Ws[1].t())
        u = torch.einsum("bcf,bf->bc", h, x @ Ws[-1])
        torch.bmm(P, u[:, :, None]).sum().backward()

    def floor():                                         # linear maps only: no graph at all
        a = a0.clone().requires_grad_(True)              # (the same ops on a, for fairness)
        sc = a / a.detach().sum(1, keepdim=True).clamp_min(1e-12)
        h = (E @ Ws[0].t()).expand(B, -1, -1) * sc[:, :, None]
        for W in Ws[1:]:
            h = relu(h) @ W.t()
        torch.einsum("bcd,bd->bc", h, x).sum().backward()

    def _dense_P(a):
        AF = A_S[None] * a[:, :, None] * a[:, None, :]   # [B, C, C]
        d = AF.sum(2)
        inv = torch.where(d > 1e-12, d.clamp_min(1e-12).rsqrt(), torch.zeros_like(d))
        return inv[:, :, None] * AF * inv[:, None, :]

    return {"pyg": pyg, "loop": loop, "dense": dense, "pyg_logits": pyg_logits,
            "dense_logits": dense_logits, "floor": floor}


def _prop_fns(st, F: int = 1024) -> Dict[str, Callable[[], None]]:
    """Propagation only: ``A_F^b H_b`` for ``H`` ``[B, C, F]``, forward + backward."""
    from torch_geometric.utils import spmm

    from pyg_mlic.nn.instance_aware_label_conv import (instance_aware_scaling,
                                                       label_adjacency_csr)

    ei, ew, a0, A_S = st["ei"], st["ew"], st["a0"], st["A_S"]
    B, C = a0.shape
    H0 = torch.randn(C, B, F)                            # the layer's [C, B, F] layout

    def sparse():
        a = a0.clone().requires_grad_(True)
        H = H0.clone().requires_grad_(True)
        adj = label_adjacency_csr(ei, ew, C)
        sc = instance_aware_scaling(a, ei, ew, C, adj).t().unsqueeze(-1)
        out = spmm(adj, (H * sc).reshape(C, B * F)).view(C, B, F) * sc
        out.sum().backward()

    def dense():
        a = a0.clone().requires_grad_(True)
        H = H0.clone().requires_grad_(True)
        AF = A_S[None] * a[:, :, None] * a[:, None, :]
        d = AF.sum(2)
        inv = torch.where(d > 1e-12, d.clamp_min(1e-12).rsqrt(), torch.zeros_like(d))
        P = inv[:, :, None] * AF * inv[:, None, :]
        torch.bmm(P, H.transpose(0, 1)).sum().backward()

    return {"sparse": sparse, "dense": dense}


def _ia_check(st) -> float:
    """Max abs difference of the classifiers of ``pyg`` vs the dense reference (sanity)."""
    from pyg_mlic.nn.instance_aware_label_conv import image_dependent_propagation

    with torch.no_grad():
        P = image_dependent_propagation(st["a0"][:2], st["A_S"])
        h = st["E"]
        for i, conv in enumerate(st["convs"]):
            h = conv(h, st["ei"], st["ew"], a=st["a0"][:2])
            h = torch.relu(h) if i < 2 else h
        hs = []
        for b in range(2):
            r = st["E"]
            for i, conv in enumerate(st["convs"]):
                r = P[b] @ r @ conv.lin.weight.t()
                r = torch.relu(r) if i < 2 else r
            hs.append(r)
        return float((h - torch.stack(hs)).abs().max() / torch.stack(hs).abs().max())


def _status_kb(field: str) -> int:
    import re

    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def _peak_rss_child(C: int, batch: int, which: str) -> None:
    """One forward + backward in this fresh process; prints the growth of the peak RSS
    over the RSS after setup (Linux: ``clear_refs`` resets the high-water mark)."""
    import gc

    st = _ia_setup(C, batch)
    fn = _ia_fns(st)[which]
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                     # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    fn()
    after = _status_kb("VmHWM")
    print(json.dumps({"peak_rss_growth_mb": (after - before) / 1024.0}))


def _peak_rss(C: int, batch: int, which: str, threads: int) -> float:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--_peak", which, str(C),
                        str(batch), "--threads", str(threads)], capture_output=True, text=True,
                       env=env, timeout=1800)
    if p.returncode:
        raise RuntimeError(f"peak-memory child failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])["peak_rss_growth_mb"]


def bench_iagcn(C: int, batch: int = 32, repeats: int = 5, memory: bool = True,
                threads: int = 1) -> Dict[str, object]:
    st = _ia_setup(C, batch)
    fns = _ia_fns(st)
    t = time_interleaved(fns, repeats=repeats)
    tp = time_interleaved(_prop_fns(st), repeats=repeats)
    res: Dict[str, object] = {
        "C": C, "batch": batch, "dims": list(IA_DIMS), "graph": st["src"],
        "edges": int(st["ei"].size(1)), "neighbours_per_node": st["nbrs"],
        "rel_err_vs_dense_reference": _ia_check(st),
        **{f"{k}_s": v for k, v in t.items()},
        "pyg_over_dense": t["pyg"] / t["dense"], "loop_over_pyg": t["loop"] / t["pyg"],
        "dense_over_pyg": t["dense"] / t["pyg"],
        "dense_logits_over_pyg_logits": t["dense_logits"] / t["pyg_logits"],
        "pyg_over_pyg_logits": t["pyg"] / t["pyg_logits"],
        # the model's path (logits without materialising M_b) against the dense reference
        # that computes Eq. 5-6 as written (classifiers M_b, then M_b x_b)
        "dense_over_pyg_logits": t["dense"] / t["pyg_logits"],
        # the per-image linear maps alone bound what any propagation can save when M_b is
        # materialised: dense / floor is the largest possible like-for-like speed-up
        "dense_over_floor": t["dense"] / t["floor"], "pyg_over_floor": t["pyg"] / t["floor"],
        "propagation_sparse_s": tp["sparse"], "propagation_dense_s": tp["dense"],
        "propagation_dense_over_sparse": tp["dense"] / tp["sparse"],
    }
    if memory:
        res["peak_rss_growth_mb"] = {k: _peak_rss(C, batch, k, threads) for k in fns}
    return res


SECTIONS = ("ml_gcn", "transformer_heads", "ia_gcn", "gm_mlic")


def _gm_mlic_module():
    """``bench_gm_mlic.py`` of this folder (the GM-MLIC graph network block; its docstring
    has the workload and the method)."""
    import bench_gm_mlic

    return bench_gm_mlic


def run(quick: bool = False, threads: int = 1, sections: Tuple[str, ...] = SECTIONS
        ) -> Dict[str, object]:
    torch.manual_seed(0)
    res: Dict[str, object] = {"machine": machine()}
    if "ml_gcn" in sections:
        res["ml_gcn"] = bench_mlgcn(backbone_batch=1 if quick else 2, repeats=3 if quick else 5)
    if "transformer_heads" in sections:
        res["transformer_heads"] = bench_transformer_heads(
            batch=1 if quick else 8, backbone_batch=1 if quick else 2,
            repeats=2 if quick else 5, ml_decoder_steps=8 if quick else 2)
    if "ia_gcn" in sections:
        res["ia_gcn"] = [bench_iagcn(C, batch=32, repeats=3 if quick else 7,
                                     memory=not quick, threads=threads) for C in (80, 500)]
    if "gm_mlic" in sections:
        res["gm_mlic"] = _gm_mlic_module().run(quick=quick, threads=threads)
    return res


def _print_iagcn(rows) -> None:
    for m in rows:
        C = m["C"]
        print(f"IA-GCN label GCN (C={C}, {' -> '.join(map(str, m['dims']))}, batch "
              f"{m['batch']}, fwd+bwd; graph {m['graph']}, {m['edges']} edges, "
              f"{m['neighbours_per_node']:.2f} neighbours/node; pyg vs dense reference "
              f"rel. err {m['rel_err_vs_dense_reference']:.1e})")
        names = {"pyg": "pyg (classifiers M_b)", "loop": "per-image loop", "dense": "dense bmm",
                 "pyg_logits": "pyg, logits only", "dense_logits": "dense, logits only",
                 "floor": "linear maps only"}
        for k, label in names.items():
            mem = m.get("peak_rss_growth_mb", {}).get(k)
            mtxt = f"   peak RSS +{mem:7.1f} MB" if mem is not None else ""
            print(f"  {label:<22}{1e3 * m[k + '_s']:10.1f} ms{mtxt}")
        if C == 80:
            print(f"  pyg / dense             {m['pyg_over_dense']:6.2f} x   (goal <= 1.1x)")
            print(f"  loop / pyg              {m['loop_over_pyg']:6.2f} x   (goal >= 1.4x)")
        else:
            print(f"  dense / pyg             {m['dense_over_pyg']:6.2f} x   (goal >= 3x; "
                  f"bound: dense / linear maps only = {m['dense_over_floor']:.2f} x)")
            print(f"  loop / pyg              {m['loop_over_pyg']:6.2f} x")
        print(f"  dense (Eq. 5-6 as written) / model path (pyg, logits only) "
              f"{m['dense_over_pyg_logits']:5.2f} x")
        print(f"  logits only: dense / pyg {m['dense_logits_over_pyg_logits']:5.2f} x; "
              f"materialising M_b costs {m['pyg_over_pyg_logits']:.2f} x the model's path")
        print(f"  propagation only (A_F H, F=1024, fwd+bwd): sparse "
              f"{1e3 * m['propagation_sparse_s']:.1f} ms, dense bmm "
              f"{1e3 * m['propagation_dense_s']:.1f} ms -> dense / sparse "
              f"{m['propagation_dense_over_sparse']:.1f} x")


def _transformer_ratios(m, meaning: str) -> Dict[str, Dict[str, object]]:
    """The ``transformer_heads.*`` entries: each head / the backbone per image, each head
    at C / itself at C = 80, ML-Decoder / Query2Label at each C."""
    out: Dict[str, Dict[str, object]] = {}
    bb = (f"ResNet-101 {m['image_size']}px fwd+bwd, per image (measured at batch "
          f"{m['backbone_batch_measured']})")
    fm = "x".join(map(str, m["feature_map"][1:]))
    for row in m["rows"]:
        name, C = row["head"], row["C"]
        label = f"{TRANSFORMER_HEADS[name]} head alone (C={C}) fwd+bwd on {fm}"
        out[f"transformer_heads.{name}[C={C}].head_over_backbone"] = ratio(
            row["head_over_backbone"], bb, f"{label}, per image (batch {m['batch']})", meaning)
        out[f"transformer_heads.{name}[C={C}].fwd_flops_over_backbone"] = ratio(
            row["fwd_flops_over_backbone"], f"ResNet-101 {m['image_size']}px forward",
            f"{TRANSFORMER_HEADS[name]} head (C={C}) forward",
            "x the baseline's forward FLOPs (counted by torch.utils.flop_counter, per "
            "image; not a timing)")
        if C != 80:
            out[f"transformer_heads.{name}[C={C}].over_C80"] = ratio(
                row["over_C80"], f"{TRANSFORMER_HEADS[name]} head alone (C=80)",
                label, meaning)
    for C, v in m["ml_decoder_over_q2l"].items():
        out[f"transformer_heads[C={C}].ml_decoder_over_q2l"] = ratio(
            v, f"Query2Label head alone (C={C})", f"ML-Decoder head alone (C={C})", meaning)
    return out


def ratios(r) -> Dict[str, Dict[str, object]]:
    """The ``ratios`` block (see ``_common.py``): every ratio the sections print, each of
    two things timed (or measured) in the same run; values as in ``r``."""
    tr, fx, mem = ("x the baseline's time (lower is better)", "x faster",
                   "x less memory (peak RSS growth)")
    out: Dict[str, Dict[str, object]] = {}
    if "ml_gcn" in r:
        m = r["ml_gcn"]
        out["ml_gcn.head_over_backbone"] = ratio(
            m["head_over_backbone_pct"] / 100, f"ResNet-101 {m['image_size']}px fwd+bwd, scaled "
            f"to batch {m['batch']}", "ML-GCN head (PyG layers)", tr)
        out["ml_gcn.pyg_over_dense"] = ratio(m["pyg_over_dense"], "dense head P (H W)",
                                             "ML-GCN head (PyG layers)", tr)
    if "transformer_heads" in r:
        out.update(_transformer_ratios(r["transformer_heads"], tr))
    names = {"pyg": "pyg (classifiers M_b)", "loop": "per-image loop", "dense": "dense bmm",
             "pyg_logits": "pyg, logits only", "dense_logits": "dense, logits only",
             "floor": "linear maps only"}
    for m in r.get("ia_gcn", []):
        k = f"ia_gcn[C={m['C']}]."
        for key, base, cand, meaning in (
                ("pyg_over_dense", "dense", "pyg", tr), ("loop_over_pyg", "loop", "pyg", fx),
                ("dense_over_pyg", "dense", "pyg", fx), ("dense_over_floor", "floor", "dense", tr),
                ("dense_over_pyg_logits", "dense", "pyg_logits", fx),
                ("dense_logits_over_pyg_logits", "dense_logits", "pyg_logits", fx),
                ("pyg_over_pyg_logits", "pyg", "pyg_logits", fx)):
            out[k + key] = ratio(m[key], names[base], names[cand], meaning)
        out[k + "propagation_dense_over_sparse"] = ratio(
            m["propagation_dense_over_sparse"], "propagation only, dense bmm",
            "propagation only, sparse", fx)
        peak = m.get("peak_rss_growth_mb", {})
        for base in ("dense", "loop"):
            if peak.get("pyg", 0) > 0 and base in peak:
                out[f"{k}memory_{base}_over_pyg"] = ratio(peak[base] / peak["pyg"], names[base],
                                                         names["pyg"], mem)
    if "gm_mlic" in r:
        out.update(_gm_mlic_module().ratios(r["gm_mlic"], "gm_mlic."))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: the machine is shared)")
    ap.add_argument("--only", choices=SECTIONS, nargs="+", help="run these sections only")
    ap.add_argument("--_peak", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args._peak:
        which, C, batch = args._peak
        _peak_rss_child(int(C), int(batch), which)
        return
    sections = tuple(args.only) if args.only else SECTIONS
    r = run(args.quick, args.threads, sections)
    if "ml_gcn" in r:
        _print_mlgcn(r["ml_gcn"])
    if "transformer_heads" in r:
        _print_transformer_heads(r["transformer_heads"])
    if "ia_gcn" in r:
        _print_iagcn(r["ia_gcn"])
    if "gm_mlic" in r:
        _gm_mlic_module()._print(r["gm_mlic"])
    if args.json:
        write_results(r, ratios(r), args.json)


def _print_mlgcn(m) -> None:
    print(f"ML-GCN head (C=80, d=300 -> 1024 -> D=2048, batch {m['batch']}, fwd+bwd, "
          f"graph {m['graph']}, {m['edges']} edges)")
    print(f"  PyG head            {1e3 * m['head_pyg_s']:9.2f} ms")
    print(f"  dense head          {1e3 * m['head_dense_s']:9.2f} ms")
    print(f"  ResNet-101 {m['image_size']}px   {1e3 * m['backbone_s_measured']:9.1f} ms for batch "
          f"{m['backbone_batch_measured']} -> {1e3 * m['backbone_s_scaled_to_batch']:.0f} ms scaled "
          f"to batch {m['batch']}")
    print(f"  head / backbone     {m['head_over_backbone_pct']:9.3f} %   (goal <= 0.5 %)")
    print(f"  PyG / dense         {m['pyg_over_dense']:9.2f} x   (goal <= 1.5x)")


if __name__ == "__main__":
    main()
