"""Shared helpers of the benchmark scripts: data location, interleaved timing,
machine description. Every speed figure is a ratio against a reference timed in
the same run (these machines are noisy: absolute times across runs mean little)."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def data_dir() -> Path:
    """The shared real data (env ``PYG_MLIC_DATA`` overrides ``../shared/data``)."""
    return Path(os.environ.get("PYG_MLIC_DATA", ROOT.parent / "shared" / "data"))


def time_interleaved(fns: Dict[str, Callable[[], object]], repeats: int = 7,
                     warmup: int = 1) -> Dict[str, float]:
    """Median seconds of each function, running one repeat of each in turn so that
    background load hits all of them alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: Dict[str, list] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def machine() -> Dict[str, object]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor() or "?"}
