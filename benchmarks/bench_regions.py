"""Benchmark: region proposals + ROI features on the CPU, and what the ROI cache saves.

On the real coco8 images (8 COCO photographs, 381x500 ... 640x488), images resized by
the detectors to a 448-pixel side (the papers' input size):

1. **per-image time** of each available backend — proposals *and* their features, the
   whole :meth:`RegionExtractor.forward` — as the median over images and repeats, with
   the **peak resident memory** of a fresh process that runs only that backend
   (``resource.getrusage(...).ru_maxrss``; the process's RSS after the imports is
   reported beside it):

   - ``torchvision`` RPN proposals, box-head features (1024-d), :math:`K = 40`;
   - ``torchvision`` final detections, box-head features (full run only);
   - ``detectron2`` RPN proposals, box-head features (when detectron2 imports);
   - ``groundtruth`` annotated boxes + RoIAlign on ResNet-50 at 448 x 448;
   - ``precomputed`` the torchvision regions read back from a ``.npz`` file.

   Weights are random (no download is possible here); the time of a forward pass does
   not depend on the weights' values except through the number of boxes, which is
   :math:`K` for RPN proposals.

2. **an epoch's feature cost with and without the cache**, same run, same extractor
   (torchvision RPN): ``RegionDataset(..., cache=False)`` extracts in every
   ``__getitem__``; with the cache an epoch reads memory-mapped rows. Reported: the
   one-off build, the start-up check of a complete cache (sizes + CRC-32), the epoch
   times and their ratio, and after how many epochs the cache has paid for itself.

Every speed or memory figure printed is a ratio to the torchvision RPN backend (or, for
the cache, to the uncached epoch) measured in the same run; the JSON (``--json FILE``, or
``--json`` alone to print it) carries them in its top-level ``ratios`` block.

Run: ``python benchmarks/bench_regions.py [--quick] [--json [FILE]]``. Data location:
``$PYG_MLIC_DATA`` or ``../shared/data`` relative to the project root.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import (data_dir, format_ratios, machine, memory_ratio,  # noqa: E402
                                speedup, time_ratio, write_results)

SIZE = 448
K = 40


def _rss_mb() -> float:
    """Peak resident set size of this process so far, MiB.

    Linux: ``VmHWM`` of ``/proc/self/status`` (the high-water mark of this process's
    own address space; ``ru_maxrss`` would also count the parent's memory inherited
    through fork before ``exec``); elsewhere ``getrusage(RUSAGE_SELF).ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2 ** 20 if sys.platform == "darwin" else r / 1024.0


def _coco8():
    from pyg_mlic.data import COCODataset
    from pyg_mlic.data.base import SubsetDataset

    root = data_dir() / "images" / "coco8"
    if not (root / "instances_train.json").is_file():
        raise FileNotFoundError(f"coco8 not found under {root} (set PYG_MLIC_DATA)")
    tr = COCODataset(root, "instances_train.json", split="train")
    va = COCODataset(root, "instances_val.json", split="val")
    return tr, va, SubsetDataset


def _build(spec: Dict[str, Any]):
    from pyg_mlic.detection import build_region_extractor

    kw = dict(spec["kwargs"])
    return build_region_extractor(spec["backend"], verbose=False, **kw)


def _backend_worker(spec: Dict[str, Any], n_images: int, repeats: int) -> Dict[str, Any]:
    """Runs in a fresh process: build one backend, time it image by image."""
    import torch

    from pyg_mlic.detection import region_source

    tr, va, _ = _coco8()
    datasets = [tr, va]
    sources = [region_source(d, i) for d in datasets for i in range(len(d))][:n_images]
    images = [s.load() for s in sources]
    rss_import = _rss_mb()
    t0 = time.perf_counter()
    ex = _build(spec)
    build_s = time.perf_counter() - t0
    anns = [s.annotation() for s in sources]
    with torch.no_grad():
        ex([images[0]] if ex.needs_image else None, [anns[0]])           # warm-up
        times: List[float] = []
        counts: List[int] = []
        for _ in range(repeats):
            for img, ann in zip(images, anns):
                t0 = time.perf_counter()
                r = ex([img] if ex.needs_image else None, [ann])[0]
                times.append(time.perf_counter() - t0)
                counts.append(r.num_instances)
    return {"name": spec["name"], "feature_dim": ex.feature_dim,
            "per_image_s_median": statistics.median(times), "per_image_s_min": min(times),
            "mean_regions": sum(counts) / len(counts), "build_s": build_s,
            "rss_after_import_mb": rss_import, "peak_rss_mb": _rss_mb(), "n": len(times)}


def _in_fresh_process(spec, n_images, repeats):
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_backend_worker, (spec, n_images, repeats))


def _write_precomputed(path: Path, n_images: int) -> None:
    """The torchvision RPN regions of the images, saved for the precomputed backend."""
    from pyg_mlic.detection import region_source, save_regions

    tr, va, _ = _coco8()
    sources = [region_source(d, i) for d in (tr, va) for i in range(len(d))][:n_images]
    ex = _build(_SPECS[0])
    regions = [ex([s.load()], [s.annotation()])[0] for s in sources]
    save_regions(path, [s.key for s in sources], regions)


_SPECS: List[Dict[str, Any]] = [
    {"name": "torchvision rpn + box_head", "backend": "torchvision",
     "kwargs": {"mode": "rpn", "feature": "box_head", "min_size": SIZE, "max_size": SIZE,
                "max_instances": K}},
    {"name": "torchvision detections + box_head", "backend": "torchvision", "full_only": True,
     "kwargs": {"mode": "detections", "feature": "box_head", "min_size": SIZE,
                "max_size": SIZE, "max_instances": K, "box_score_thresh": 0.0}},
    {"name": "detectron2 rpn + box_head", "backend": "detectron2", "needs": "detectron2",
     "kwargs": {"mode": "rpn", "feature": "box_head", "min_size": SIZE, "max_size": SIZE,
                "max_instances": K}},
    {"name": "groundtruth + ResNet-50 RoIAlign", "backend": "groundtruth",
     "kwargs": {"backbone": "resnet50", "image_size": SIZE, "max_instances": K}},
    {"name": "precomputed (.npz)", "backend": "precomputed", "kwargs": {"max_instances": K}},
]


def _epoch_costs(n_images: int, nocache_epochs: int) -> Dict[str, Any]:
    """An epoch's ROI cost with and without the cache (same extractor, same process)."""
    import torch

    from pyg_mlic.detection import RegionCache, RegionDataset

    tr, va, Subset = _coco8()
    splits = [tr, va] if n_images > len(tr) else [Subset(tr, list(range(n_images)),
                                                         split=f"train[:{n_images}]")]
    ex = _build(_SPECS[0])
    nocache = [RegionDataset(d, ex, cache=False) for d in splits]

    def epoch(dsets):
        t = time.perf_counter()
        for d in dsets:
            for i in range(len(d)):
                d.regions(i)
        return time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cached = [RegionDataset(d, ex, cache_dir=Path(tmp) / f"c{j}", progress=False)
                  for j, d in enumerate(splits)]
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for j, d in enumerate(splits):                                   # start-up check
            RegionCache(ex, d, Path(tmp) / f"c{j}").build(progress=False)
        reopen_s = time.perf_counter() - t0
        epoch(cached)                                                    # page cache warm
        with torch.no_grad():
            t_nocache = [epoch(nocache) for _ in range(nocache_epochs)]
        t_cache = [epoch(cached) for _ in range(5)]
        same = all(torch.equal(c.regions(i)["roi_features"], n.regions(i)["roi_features"])
                   for c, n in zip(cached, nocache) for i in range(len(c)))
    no, ca = statistics.median(t_nocache), statistics.median(t_cache)
    return {"images": sum(len(d) for d in splits), "build_s": build_s,
            "startup_check_s": reopen_s, "epoch_nocache_s": no, "epoch_cache_s": ca,
            "speedup_cache": no / ca, "break_even_epochs": build_s / max(no - ca, 1e-9),
            "cache_equals_fresh": same}


def run(quick: bool = False) -> Dict[str, Any]:
    """Measure and return the timings (seconds), memory (MiB) and ratios as a dict."""
    from pyg_mlic.detection import detectron2_available

    n_images = 2 if quick else 8
    repeats = 1 if quick else 2
    d2 = detectron2_available()
    results: List[Dict[str, Any]] = []
    skipped: Dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "regions.npz"
        _write_precomputed(pre, n_images)
        for spec in _SPECS:
            if spec.get("full_only") and quick:
                skipped[spec["name"]] = "full run only"
                continue
            if spec.get("needs") == "detectron2" and not d2:
                skipped[spec["name"]] = "detectron2 not importable"
                continue
            if spec["backend"] == "precomputed":
                spec = dict(spec, kwargs=dict(spec["kwargs"], path=str(pre)))
            results.append(_in_fresh_process(spec, n_images, repeats))
    ref = results[0]["per_image_s_median"]
    ref_mem = results[0]["peak_rss_mb"]
    for r in results:
        r["ratio_vs_torchvision_rpn"] = r["per_image_s_median"] / ref
        r["peak_rss_ratio_vs_torchvision_rpn"] = r["peak_rss_mb"] / ref_mem
    return {"benchmark": "regions_coco8", "image_side": SIZE, "max_instances": K,
            "images": n_images, "repeats": repeats, "machine": machine(),
            "backends": results, "skipped": skipped,
            "epoch": _epoch_costs(n_images, nocache_epochs=1 if quick else 2)}


def ratios(res: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The ``ratios`` block: each backend's time per image and peak memory against the
    torchvision RPN backend, and the cached epoch against the uncached one."""
    b = res["backends"]
    ref = b[0]
    out: Dict[str, Dict[str, Any]] = {}
    for r in b[1:]:
        out[f"time per image: {r['name']}"] = time_ratio(
            r["per_image_s_median"], ref["per_image_s_median"], ref["name"], r["name"])
        out[f"peak RSS: {r['name']}"] = memory_ratio(r["peak_rss_mb"], ref["peak_rss_mb"],
                                                     ref["name"], r["name"])
    e = res["epoch"]
    out["epoch.speedup_cache"] = speedup(
        e["epoch_nocache_s"], e["epoch_cache_s"], "epoch without the ROI cache (extracting)",
        "epoch with the ROI cache (memory-mapped)")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 images, 1 repeat")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="write the results (with their ratios block) to FILE; "
                         "without FILE print them as JSON instead of the table")
    args = ap.parse_args(argv)
    res = run(quick=args.quick)
    if args.json == "-":
        write_results(res, ratios(res), "-")
        return 0
    if args.json:
        write_results(res, ratios(res), args.json)
    m = res["machine"]
    print(f"regions on coco8 at {res['image_side']} px, K = {res['max_instances']}, "
          f"{res['images']} images x {res['repeats']} repeats, {m['torch_threads']} torch "
          f"threads (CPU)")
    print(f"  {'backend':36s} {'D':>5s} {'s/image':>8s} {'ratio':>6s} {'regions':>8s} "
          f"{'RSS import':>10s} {'peak RSS':>9s} {'ratio':>6s} {'peak - import':>13s}")
    for r in res["backends"]:
        print(f"  {r['name']:36s} {r['feature_dim']:5d} {r['per_image_s_median']:8.3f} "
              f"{r['ratio_vs_torchvision_rpn']:6.2f} {r['mean_regions']:8.1f} "
              f"{r['rss_after_import_mb']:8.0f}MB {r['peak_rss_mb']:7.0f}MB "
              f"{r['peak_rss_ratio_vs_torchvision_rpn']:6.2f} "
              f"{r['peak_rss_mb'] - r['rss_after_import_mb']:11.0f}MB")
    print("  (ratios: time per image and peak RSS over the first row's, same run)")
    for name, why in res["skipped"].items():
        print(f"  {name:36s} skipped: {why}")
    e = res["epoch"]
    print(f"epoch of {e['images']} images, torchvision RPN features: without cache "
          f"{e['epoch_nocache_s']:.2f} s, with cache {1e3 * e['epoch_cache_s']:.2f} ms "
          f"-> ratio {e['speedup_cache']:.0f}x")
    print(f"  cache build {e['build_s']:.2f} s (pays off after {e['break_even_epochs']:.2f} "
          f"epochs), start-up check of a complete cache {1e3 * e['startup_check_s']:.1f} ms, "
          f"cached == fresh: {e['cache_equals_fresh']}")
    print("ratios (same run):\n" + format_ratios(ratios(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
