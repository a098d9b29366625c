"""GM-MLIC graph network block: fast dense path vs a straightforward reference.

Workload (the paper's COCO setting, Sec. 4.2): 8 images x 35 instances x 80 labels,
ROI features of 1024 and 2048 dims, 300-d label vectors, encoder 512, two convolution
modules of widths 512 and 256, kNN k = 5, complete label graph; forward + backward of
``sum(Z * G)`` for a fixed random ``G``.

* **fast** — :meth:`GraphNetworkBlock.forward_dense`: whole batch at once, matching edges
  dense ``[B, M, C, F]``, first layers of the edge MLPs as sums of per-node projections,
  label-only quantities once per batch, mean-then-second-layer aggregation, folded linear
  maps between consecutive MLPs.
* **reference** — :meth:`GraphNetworkBlock.forward_reference`: a loop over images, each
  building its :func:`~pyg_mlic.graphs.assignment_graph` (edge inputs by concatenation)
  and running the textbook form of every MLP. Same parameters; outputs are checked equal
  (max abs difference reported, goal <= 1e-5).

Time: median of interleaved repeats in one process, wall-clock and CPU time
(``time.process_time``; with ``torch.set_num_threads(1)``, the default, it is the compute
time and stays honest when other jobs share the cores, which inflates wall-clock times). Peak memory: torch's CPU allocations are invisible
to ``tracemalloc``, so each variant runs once in a fresh child process and we report the
growth of the process's peak resident set size (``VmHWM`` of ``/proc/self/status``, reset
through ``/proc/self/clear_refs`` after the setup) over its resident size just before the
forward pass (inputs and parameters already allocated). Linux only. glibc returns
large blocks to the OS on free, so this tracks the peak of live tensors plus allocator
slack; it is an upper bound on tensor memory and the same method for both variants.

Usage: ``python benchmarks/bench_gm_mlic.py [--quick] [--json FILE] [--threads N]``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, Optional, Sequence, Tuple

import torch

try:
    from _common import machine, ratio, write_results
except ImportError:  # imported as benchmarks.bench_gm_mlic
    from benchmarks._common import machine, ratio, write_results

from pyg_mlic.nn import GraphNetworkBlock

D_LABEL = 300


def _setup(B: int, M: int, C: int, D: int, seed: int = 0) -> Dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, M, D, generator=g).relu()                 # ROI features are >= 0
    xy = torch.rand(B, M, 2, generator=g) * 0.7
    wh = torch.rand(B, M, 2, generator=g) * 0.3 + 0.01
    boxes = torch.cat([xy, xy + wh], -1)
    mask = torch.ones(B, M, dtype=torch.bool)
    E = torch.randn(C, D_LABEL, generator=g)
    G = torch.randn(B, M, C, generator=g)
    torch.manual_seed(seed)
    net = GraphNetworkBlock(D, D_LABEL)
    return dict(f=f, boxes=boxes, mask=mask, E=E, G=G, net=net)


def _fns(st) -> Dict[str, object]:
    net = st["net"]

    def run(method):
        def fn():
            net.zero_grad(set_to_none=True)
            z = method(st["f"], st["boxes"], st["mask"], st["E"])
            (z * st["G"]).sum().backward()
            return z
        return fn

    return {"fast": run(net.forward_dense), "reference": run(net.forward_reference)}


def _check(st) -> Tuple[float, float]:
    """(max |Z_fast - Z_ref|, max over the parameters of ||g_fast - g_ref|| / ||g_ref||)."""
    net = st["net"]
    fns = _fns(st)
    z_fast = fns["fast"]().detach()
    g_fast = {n: p.grad.clone() for n, p in net.named_parameters()}
    z_ref = fns["reference"]().detach()
    rel = max(float((p.grad - g_fast[n]).norm() / p.grad.norm().clamp_min(1e-30))
              for n, p in net.named_parameters())
    return float((z_fast - z_ref).abs().max()), rel


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{key} not in /proc/self/status")


def _peak_child(which: str, B: int, M: int, C: int, D: int) -> None:
    st = _setup(B, M, C, D)
    fn = _fns(st)[which]
    # reset the peak-RSS mark (VmHWM) of this process: ru_maxrss would carry the parent's
    # high-water mark across fork + exec
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    print(json.dumps({"peak_mb": peak - before, "seconds_single": dt}))


def _peak(which: str, B: int, M: int, C: int, D: int, threads: int) -> Dict[str, float]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--_peak", which, str(B),
                        str(M), str(C), str(D), "--threads", str(threads)],
                       capture_output=True, text=True, env=env, timeout=3600)
    if p.returncode:
        raise RuntimeError(f"peak-memory child failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _time_wall_and_cpu(fns, repeats: int, warmup: int):
    """Median wall-clock and CPU (``time.process_time``) seconds of each function, run in
    turn (interleaved). With one torch thread the CPU time is the compute time, and it
    does not grow when other processes share the cores, unlike the wall-clock time."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    wall: Dict[str, list] = {k: [] for k in fns}
    cpu: Dict[str, list] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            f()
            wall[k].append(time.perf_counter() - w0)
            cpu[k].append(time.process_time() - c0)
    return ({k: statistics.median(v) for k, v in wall.items()},
            {k: statistics.median(v) for k, v in cpu.items()})


def bench_pair(D: int, B: int = 8, M: int = 35, C: int = 80, repeats: int = 3,
               warmup: int = 1, memory: bool = True, threads: int = 1) -> Dict[str, object]:
    st = _setup(B, M, C, D)
    max_abs, grad_rel = _check(st)
    t, cpu = _time_wall_and_cpu(_fns(st), repeats=repeats, warmup=warmup)
    res: Dict[str, object] = {
        "B": B, "M": M, "C": C, "D": D, "d": D_LABEL, "max_abs_diff": max_abs,
        "max_rel_grad_diff": grad_rel, "fast_s": t["fast"], "reference_s": t["reference"],
        "speedup": t["reference"] / t["fast"], "fast_cpu_s": cpu["fast"],
        "reference_cpu_s": cpu["reference"], "cpu_speedup": cpu["reference"] / cpu["fast"],
        "fast_images_per_s": B / t["fast"], "reference_images_per_s": B / t["reference"]}
    if memory:
        mem = {k: _peak(k, B, M, C, D, threads)["peak_mb"] for k in ("fast", "reference")}
        res.update(fast_peak_mb=mem["fast"], reference_peak_mb=mem["reference"],
                   memory_ratio=mem["reference"] / max(mem["fast"], 1e-9))
    return res


def growth(B: int, D: int, Ms=(10, 35, 100), Cs=(20, 80, 500), threads: int = 1,
           memory: bool = True) -> list:
    """Fast path only: seconds and peak memory for one forward + backward."""
    rows = []
    for M, C in [(m, 80) for m in Ms] + [(35, c) for c in Cs if c != 80]:
        if memory:
            r = _peak("fast", B, M, C, D, threads)
            rows.append({"B": B, "M": M, "C": C, "D": D, "seconds": r["seconds_single"],
                         "peak_mb": r["peak_mb"]})
        else:
            st = _setup(B, M, C, D)
            fn = _fns(st)["fast"]
            t0 = time.perf_counter()
            fn()
            rows.append({"B": B, "M": M, "C": C, "D": D,
                         "seconds": time.perf_counter() - t0})
    return rows


def run(quick: bool = False, threads: int = 1, dims: Optional[Sequence[int]] = None,
        repeats: Optional[int] = None, with_growth: bool = True) -> Dict[str, object]:
    """Benchmark results as a dict (``quick``: D = 1024 only, one repeat, smaller growth
    table; ``dims`` / ``repeats`` override the ROI sizes and the timing repeats)."""
    torch.set_num_threads(threads)
    res: Dict[str, object] = {"machine": machine(), "threads": threads}
    dims = tuple(dims) if dims else ((1024,) if quick else (1024, 2048))
    reps = int(repeats) if repeats else (1 if quick else 3)
    res["pairs"] = [bench_pair(D, repeats=reps, warmup=0 if quick or reps == 1 else 1,
                               threads=threads) for D in dims]
    if not with_growth:
        res["growth"] = []
    elif quick:
        res["growth"] = growth(1, 1024, Ms=(10, 35), Cs=(20, 80), threads=threads)
    else:
        res["growth"] = growth(1, 1024, threads=threads)
    return res


def _print(r) -> None:
    for p in r["pairs"]:
        print(f"GM-MLIC GNB, {p['B']} images x {p['M']} instances x {p['C']} labels, "
              f"ROI {p['D']}-d, labels {p['d']}-d, fwd+bwd ({r['threads']} thread(s))")
        print(f"  fast       {p['fast_s']:8.2f} s  {p['fast_images_per_s']:7.2f} images/s"
              + (f"   peak +{p['fast_peak_mb']:8.1f} MB" if "fast_peak_mb" in p else ""))
        print(f"  reference  {p['reference_s']:8.2f} s  {p['reference_images_per_s']:7.2f} "
              f"images/s" + (f"   peak +{p['reference_peak_mb']:8.1f} MB"
                             if "reference_peak_mb" in p else ""))
        print(f"  CPU time: fast {p['fast_cpu_s']:.2f} s, reference {p['reference_cpu_s']:.2f} s, "
              f"speed-up {p['cpu_speedup']:.2f}x")
        print(f"  wall-clock speed-up {p['speedup']:.2f}x (goal >= 3x)"
              + (f", memory {p['memory_ratio']:.2f}x less (goal >= 3x)"
                 if "memory_ratio" in p else "")
              + f"; max |Z_fast - Z_ref| = {p['max_abs_diff']:.1e} (goal <= 1e-5), "
              f"max ||dgrad|| / ||grad|| {p['max_rel_grad_diff']:.1e}")
    print("Growth of the fast path (one fwd+bwd, complete label graph):")
    print("      B     M     C     D   seconds   peak MB")
    for g in r["growth"]:
        pm = f"{g['peak_mb']:9.1f}" if "peak_mb" in g else "        -"
        print(f"  {g['B']:5d} {g['M']:5d} {g['C']:5d} {g['D']:5d} {g['seconds']:9.2f} {pm}")


def ratios(r, prefix: str = "") -> Dict[str, Dict[str, object]]:
    """The ``ratios`` block (see ``_common.py``): per ROI size, the fast path against the
    reference measured in the same run (wall-clock, CPU time, peak memory)."""
    ref, fast = "reference: per-image loop (forward_reference)", "fast: forward_dense"
    out: Dict[str, Dict[str, object]] = {}
    for p in r["pairs"]:
        key = f"{prefix}pairs[D={p['D']}]"
        out[f"{key}.speedup"] = ratio(p["speedup"], ref, fast, "x faster (wall-clock)")
        out[f"{key}.cpu_speedup"] = ratio(p["cpu_speedup"], ref, fast, "x faster (CPU time)")
        if "memory_ratio" in p:
            out[f"{key}.memory_ratio"] = ratio(p["memory_ratio"], ref, fast,
                                               "x less memory (peak RSS growth)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: the machine is shared)")
    ap.add_argument("--dims", type=int, nargs="+", help="ROI feature sizes (default 1024 2048)")
    ap.add_argument("--repeats", type=int, help="timing repeats (default 3, --quick 1)")
    ap.add_argument("--no-growth", action="store_true", help="skip the growth table")
    ap.add_argument("--_peak", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args._peak:
        which, *dims = args._peak
        _peak_child(which, *map(int, dims))
        return
    r = run(args.quick, args.threads, args.dims, args.repeats, not args.no_growth)
    _print(r)
    if args.json:
        write_results(r, ratios(r), args.json)


if __name__ == "__main__":
    main()
