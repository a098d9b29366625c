"""Message passing in training: the graph heads of IA-GCN and GM-MLIC through PyG's
``MessagePassing`` API against the fast paths they replaced, timed in the same run.

The training paths of both models now run inside their layers' ``propagate`` /
``message_and_aggregate`` (IA-GCN's :class:`~pyg_mlic.nn.InstanceAwareLabelConv` over a
sparse ``adj_t``; dense per-image matrices for :math:`C \\le 128` and signals of at least
64 channels) and ``propagate`` /
``edge_updater`` (GM-MLIC's :class:`~pyg_mlic.nn.GNBNodeConv` /
:class:`~pyg_mlic.nn.GNBEdgeConv` over edge lists and the block ``adj_t`` of the matching
edges). ``old`` is the **baseline (pre-MessagePassing fast path)**: the functions of
commit 9f37b11, copied verbatim into ``benchmarks/_baseline_pre_message_passing.py``, run
on the same modules (same parameters) and inputs. Goal: ``new / old <= 1.10``.

Workloads, forward + backward of a fixed random projection of the output:

* IA-GCN (batch 32, label GCN 300 -> 512 -> 1024 -> D = 2048, ROI scores of 40 ROIs,
  region GCN 256 -> 512 -> 1024 -> 2048) at C = 80 (COCO's real re-weighted graph: the
  dense per-image path) and C = 500 (a synthetic graph with COCO-like sparsity, see
  ``bench_heads.py``: the sparse path):

  - ``global``: the model's global branch, :meth:`IAGCN.global_logits` (logits
    :math:`\\mathbf{M}_b\\mathbf{x}_b` without materialising the classifiers), gradients
    reaching the scores :math:`\\mathbf{a}`;
  - ``classifiers``: the stacked layers materialising :math:`\\mathbf{M}_b`
    (:meth:`IAGCN.classifiers`);
  - ``head``: everything :meth:`IAGCN.forward` does after reading the ROIs (ROI scores,
    image-dependent graph, global and region branches, fusion).

* GM-MLIC (the paper's COCO setting: 8 images x 35 instances x 80 labels, ROI 1024-d,
  300-d label vectors, encoder 512, modules 512 and 256, kNN k = 5, complete label
  graph): :meth:`GraphNetworkBlock.forward_dense`, the model's path.

Timing: median of interleaved repeats in one process (``--threads``, default 1), CPU time
(``time.process_time``: with one thread the compute time, honest when other jobs share the
cores) and wall-clock; the headline ratio is the CPU time one. Outputs of ``new`` and
``old`` are checked equal (max abs difference on the real entries).

Usage: ``python benchmarks/bench_message_passing.py [--quick] [--json FILE] [--threads N]``.
"""
from __future__ import annotations

import argparse
from typing import Callable, Dict

import torch

try:
    from _common import machine, time_ratio, write_results
except ImportError:  # imported as benchmarks.bench_message_passing
    from benchmarks._common import machine, time_ratio, write_results

try:
    import _baseline_pre_message_passing as old
except ImportError:
    from benchmarks import _baseline_pre_message_passing as old

GOAL = 1.10


def _pair(new: Callable[[], torch.Tensor], ref: Callable[[], torch.Tensor], repeats: int,
          mask=None) -> Dict[str, float]:
    """Time ``new`` against ``old`` (each returns its output after the backward pass)."""
    a, b = new().detach(), ref().detach()
    if mask is not None:
        a, b = a[mask], b[mask]
    diff = float((a - b).abs().max())
    scale = float(b.abs().max().clamp_min(1e-30))
    from bench_gm_mlic import _time_wall_and_cpu

    # (the output check above has run each once: no further warm-up)
    wall, cpu = _time_wall_and_cpu({"new": new, "old": ref}, repeats, warmup=0)
    return {"new_cpu_s": cpu["new"], "old_cpu_s": cpu["old"], "new_wall_s": wall["new"],
            "old_wall_s": wall["old"], "new_over_old": cpu["new"] / cpu["old"],
            "wall_new_over_old": wall["new"] / wall["old"], "max_abs_diff": diff,
            "max_rel_diff": diff / scale}


# ----------------------------------------------------------------------------- IA-GCN
def _ia_model(C: int, seed: int = 0):
    from bench_heads import _ia_graph

    from pyg_mlic.models import build_model

    g, src, nbrs = _ia_graph(C)
    torch.manual_seed(seed)
    m = build_model("ia_gcn", classes=[f"c{i}" for i in range(C)], input_kind="features",
                    in_features=16, encoder_hidden=[], encoder_out=2048,
                    graph_edge_index=g.data.edge_index,
                    graph_edge_weight=g.data.edge_weight.float(),
                    label_embeddings=torch.randn(C, 300), roi_feature_dim=256,
                    gcn_hidden=[512, 1024],
                    region_conv="roi_graph")  # the reading the kept old path implements
    return m, src, nbrs


def bench_iagcn(C: int, batch: int = 32, rois: int = 40, repeats: int = 5) -> Dict[str, object]:
    from pyg_mlic.nn.instance_aware_label_conv import instance_aware_scaling

    m, src, nbrs = _ia_model(C)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 2048, generator=gen)
    a0 = torch.rand(batch, C, generator=gen)
    X = torch.randn(batch, rois, m.roi_in_features, generator=gen)
    mask = torch.rand(batch, rois, generator=gen) < 0.7
    mask[0] = False                                           # an image without ROIs
    X = X * mask[..., None]
    G = torch.randn(batch, C, generator=gen)
    Gm = torch.randn(batch, C, 2048, generator=gen)
    params = list(m.parameters())

    def step(fn, G_):
        def run():
            for p in params:
                p.grad = None
            a = a0.clone().requires_grad_(True)
            out = fn(a)
            (out * G_).sum().backward()
            return out
        return run

    def new_global(a):
        adj = m._adjacency(x.dtype)
        return m.global_logits(x, instance_aware_scaling(a, adj), adj)

    def old_global(a):
        adj = old.label_adjacency_csr(m.edge_index, m.edge_weight, C)
        s = old.instance_aware_scaling(a, m.edge_index, m.edge_weight, C, adj)
        return old.ia_global_logits(m, x, s, adj)

    def new_classifiers(a):
        adj = m._adjacency(x.dtype)
        return m.classifiers(instance_aware_scaling(a, adj), adj)

    def old_classifiers(a):
        adj = old.label_adjacency_csr(m.edge_index, m.edge_weight, C)
        s = old.instance_aware_scaling(a, m.edge_index, m.edge_weight, C, adj)
        h = m.label_embeddings
        for i, conv in enumerate(m.gcn):
            h = old.conv_forward(conv, h, m.edge_index, m.edge_weight, adj=adj, scaling=s)
            h = m.act(h) if i < len(m.gcn) - 1 else h
        return h

    def new_head(a):  # IAGCN.forward after _read, id_lcm and com_sco on
        S = torch.sigmoid(m.f_cnn(X)) * mask[..., None]
        adj = m._adjacency(x.dtype)
        s = instance_aware_scaling(S.max(1).values, adj)
        y_w = m.global_logits(x, s, adj)
        y_r = m._region_scores(S, mask, s, adj)
        return m.fusion_weight * y_w + (1.0 - m.fusion_weight) * y_r + 0 * a.sum()

    def old_head(a):
        return old.ia_head(m, x, X, mask) + 0 * a.sum()

    return {"C": C, "batch": batch, "graph": src, "edges": int(m.edge_index.size(1)),
            "neighbours_per_node": nbrs, "dense_per_image_path": C <= m.gcn[0].dense_max_nodes,
            "global": _pair(step(new_global, G), step(old_global, G), repeats),
            "classifiers": _pair(step(new_classifiers, Gm), step(old_classifiers, Gm),
                                 repeats),
            "head": _pair(step(new_head, G), step(old_head, G), repeats)}


# ----------------------------------------------------------------------------- GM-MLIC
def bench_gnb(B: int = 8, M: int = 35, C: int = 80, D: int = 1024,
              repeats: int = 3) -> Dict[str, object]:
    from bench_gm_mlic import _setup

    st = _setup(B, M, C, D)
    net, mask = st["net"], st["mask"]
    mask[0, M // 2:] = False                                   # some padding
    f = st["f"] * mask[..., None]

    def run(method):
        def fn():
            net.zero_grad(set_to_none=True)
            z = method(f, st["boxes"], mask, st["E"])
            (z * st["G"] * mask[..., None]).sum().backward()
            return z
        return fn

    res = _pair(run(net.forward_dense), run(lambda *t: old.gnb_forward_dense(net, *t)),
                repeats, mask=mask)
    return {"B": B, "M": M, "C": C, "D": D, **res}


# ----------------------------------------------------------------------------- driver
def run(quick: bool = False, threads: int = 1) -> Dict[str, object]:
    torch.set_num_threads(threads)
    reps = 3 if quick else 7       # C = 80 costs about a tenth of C = 500: 3x the repeats
    res: Dict[str, object] = {"machine": machine(), "threads": threads, "quick": quick,
                              "goal_new_over_old_max": GOAL}
    res["ia_gcn"] = [bench_iagcn(C, repeats=reps * (3 if C == 80 else 1)) for C in (80, 500)]
    res["gm_mlic"] = bench_gnb(repeats=3 if quick else 5)
    res["goal_met"] = all(v["value"] <= GOAL for k, v in ratios(res).items()
                          if ".wall_" not in k)                  # the CPU-time ratios
    return res


def ratios(r) -> Dict[str, Dict[str, object]]:
    """The ``ratios`` block (see ``_common.py``): CPU time of each MessagePassing path in
    units of the pre-MessagePassing fast path's, measured in the same run."""
    old_name = "baseline (pre-MessagePassing fast path, commit 9f37b11)"
    out: Dict[str, Dict[str, object]] = {}
    names = {"global": "IAGCN.global_logits", "classifiers": "IAGCN.classifiers",
             "head": "IA-GCN head after the ROIs"}
    for m in r["ia_gcn"]:
        for k, label in names.items():
            p = m[k]
            out[f"ia_gcn[C={m['C']}].{k}.new_over_old"] = time_ratio(
                p["new_cpu_s"], p["old_cpu_s"], f"{old_name}, {label}",
                f"{label} through InstanceAwareLabelConv.propagate (CPU time)")
    g = r["gm_mlic"]
    out[f"gm_mlic[C={g['C']},D={g['D']}].new_over_old"] = time_ratio(
        g["new_cpu_s"], g["old_cpu_s"], f"{old_name}, GraphNetworkBlock.forward_dense",
        "GraphNetworkBlock.forward_dense through GNBNodeConv.propagate / "
        "GNBEdgeConv.edge_updater (CPU time)")
    out[f"gm_mlic[C={g['C']},D={g['D']}].wall_new_over_old"] = time_ratio(
        g["new_wall_s"], g["old_wall_s"], f"{old_name}, GraphNetworkBlock.forward_dense",
        "GraphNetworkBlock.forward_dense through the MessagePassing API (wall-clock)")
    return out


def _print(r) -> None:
    print(f"MessagePassing training paths vs the pre-MessagePassing fast paths "
          f"({r['threads']} thread(s), CPU-time medians; goal new/old <= {GOAL})")
    for m in r["ia_gcn"]:
        path = "dense per-image" if m["dense_per_image_path"] else "sparse"
        print(f"  IA-GCN C={m['C']} ({path} path; {m['edges']} edges), batch {m['batch']}")
        for k in ("global", "classifiers", "head"):
            p = m[k]
            print(f"    {k:<12} new {1e3 * p['new_cpu_s']:8.1f} ms  old "
                  f"{1e3 * p['old_cpu_s']:8.1f} ms  ratio new/old {p['new_over_old']:.3f} "
                  f"(wall {p['wall_new_over_old']:.3f})  max rel diff {p['max_rel_diff']:.1e}")
    g = r["gm_mlic"]
    print(f"  GM-MLIC GNB {g['B']} x {g['M']} x {g['C']}, ROI {g['D']}-d: new "
          f"{g['new_cpu_s']:.2f} s  old {g['old_cpu_s']:.2f} s  ratio new/old "
          f"{g['new_over_old']:.3f} (wall {g['wall_new_over_old']:.3f})  max abs diff "
          f"{g['max_abs_diff']:.1e}")
    print(f"  goal met: {r['goal_met']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: the machine is shared)")
    args = ap.parse_args()
    r = run(args.quick, args.threads)
    _print(r)
    if args.json:
        write_results(r, ratios(r), args.json)


if __name__ == "__main__":
    main()
