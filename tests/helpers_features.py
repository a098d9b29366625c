"""A small, learnable features file in the contract's format (for engine/CLI tests)."""
from pathlib import Path

import numpy as np


def make_features_npz(path: Path, n: int = 240, d: int = 16, c: int = 5, seed: int = 0,
                      with_mask: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.3).astype(np.uint8)
    labels[labels.sum(1) == 0, 0] = 1
    # the feature/label relation is shared by every file (seed only changes the samples)
    proj = np.random.default_rng(1234).normal(size=(c, d)).astype(np.float32)
    feats = labels.astype(np.float32) @ proj + 0.5 * rng.normal(size=(n, d)).astype(np.float32)
    arrays = dict(features=feats.astype(np.float32), labels=labels,
                  classes=np.array([f"class_{i}" for i in range(c)]))
    if with_mask:
        arrays["mask"] = rng.random((n, c)) > 0.05
    np.savez(path, **arrays)
    return path
