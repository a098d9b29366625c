"""Atomic, pickle-free checkpoints.

A checkpoint is a ``dict`` of tensors and plain Python values saved with
:func:`torch.save` and loaded with ``torch.load(weights_only=True)`` — the restricted
unpickler that refuses arbitrary objects, so a malicious file cannot run code. It is
written to a temporary file in the same folder and moved into place with
:func:`os.replace`, so a crash never leaves a truncated checkpoint behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from pyg_mlic.errors import CheckpointError, class_mismatch_message
# atomic_write / atomic_torch_save: re-exported here (their former home) for callers
from pyg_mlic.utils.io import atomic_torch_save, atomic_write  # noqa: F401
from pyg_mlic.version import __version__

FORMAT = "pyg_mlic-checkpoint"
PathLike = Union[str, os.PathLike]


def _plain(obj: Any) -> Any:
    """Convert numpy values/arrays and paths to types the safe unpickler accepts
    (dict keys are kept: optimiser states are keyed by parameter index)."""
    import numpy as np

    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):  # keep tuples: optimisers compare e.g. `betas`
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_checkpoint(path: PathLike, *, model, extra: Optional[Dict[str, Any]] = None) -> None:
    """Write ``model`` (name, classes, build arguments, weights) plus ``extra`` state."""
    ckpt = {
        "format": FORMAT,
        "library_version": __version__,
        "model_name": model.model_name,
        "classes": list(model.classes),
        "build_kwargs": _plain(model.build_kwargs),
        "state_dict": model.state_dict(),
    }
    if extra:
        ckpt.update(_plain(extra))
    atomic_torch_save(ckpt, path)


def load_checkpoint(path: PathLike, *, expect_model: Optional[str] = None,
                    expect_classes: Optional[Sequence[str]] = None,
                    map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load and validate a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: truncated/corrupt file, a file that is not a pyg_mlic
            checkpoint (including pickles carrying code, which the safe loader
            refuses), or a model name / class list other than the expected ones.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not a loadable checkpoint"
        raise CheckpointError(
            f"{path}: not a loadable pyg_mlic checkpoint (truncated, corrupt, or containing "
            f"objects the safe loader refuses): {type(e).__name__}: {str(e)[:300]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pyg_mlic checkpoint (missing format tag {FORMAT!r})")
    for key in ("model_name", "classes", "build_kwargs", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    if expect_model is not None and ckpt["model_name"] != expect_model:
        raise CheckpointError(f"{path}: checkpoint holds model {ckpt['model_name']!r}, "
                              f"expected {expect_model!r}")
    if expect_classes is not None and list(expect_classes) != list(ckpt["classes"]):
        raise CheckpointError(f"{path}: class list differs: " + class_mismatch_message(
            "checkpoint", ckpt["classes"], "expected", list(expect_classes)))
    return ckpt


#: keys :func:`update_checkpoint` refuses to change (what makes the file a model)
_CORE_KEYS = ("format", "library_version", "model_name", "classes", "build_kwargs", "state_dict")


def update_checkpoint(path: PathLike, entries: Dict[str, Any]) -> None:
    """Add (or replace) ``entries`` in the checkpoint at ``path``, atomically.

    The file is loaded and validated as by :func:`load_checkpoint`, the entries are
    merged in (converted as in :func:`save_checkpoint`) and the whole checkpoint is
    written to a temporary file and moved into place: a crash leaves the old file.
    Used for what is known only after training, e.g. the calibrated ``thresholds``.

    Raises:
        ValueError: an entry would replace the model itself (``state_dict``,
            ``model_name``, ``classes``, ``build_kwargs``, ``format``, ``library_version``).
        FileNotFoundError, CheckpointError: as :func:`load_checkpoint`.
    """
    core = sorted(set(entries) & set(_CORE_KEYS))
    if core:
        raise ValueError(f"update_checkpoint: {core} define the model and cannot be replaced; "
                         f"write a new checkpoint with save_checkpoint instead")
    ckpt = load_checkpoint(path)
    ckpt.update(_plain(dict(entries)))
    atomic_torch_save(ckpt, path)


#: the ``--threshold`` words of ``pyg-mlic eval`` / ``predict`` that read the checkpoint
THRESHOLD_KINDS = ("calibrated", "calibrated-global")


def checkpoint_thresholds(ckpt: Dict[str, Any], kind: str = "calibrated",
                          path: Optional[PathLike] = None) -> Union[float, List[float]]:
    """The calibrated thresholds stored in a loaded checkpoint (see
    :meth:`pyg_mlic.engine.Trainer.final_evaluation`).

    Args:
        ckpt: a checkpoint dict from :func:`load_checkpoint`.
        kind: ``"calibrated"`` (one probability threshold per class, a list) or
            ``"calibrated-global"`` (the one global threshold, a float).
        path: the file, for the error message.

    Raises:
        CheckpointError: the checkpoint holds no thresholds (trained without a validation
            split, or before calibration existed), or malformed ones.
    """
    where = path if path is not None else "checkpoint"
    if kind not in THRESHOLD_KINDS:
        raise ValueError(f"checkpoint_thresholds: kind must be one of {THRESHOLD_KINDS}, "
                         f"got {kind!r}")
    t = ckpt.get("thresholds")
    if not isinstance(t, dict):
        if (ckpt.get("train_config") or {}).get("select") == "best_val" and \
                "best_val_map" in ckpt:
            raise CheckpointError(
                f"{where}: no calibrated thresholds stored here: this run chose its weights "
                f"on the validation split (select='best_val'), and the thresholds are stored "
                f"with those weights, in best.pt next to this file; use that checkpoint, or "
                f"--threshold 0.5 or a number")
        raise CheckpointError(
            f"{where}: no calibrated thresholds stored (they are chosen on the validation split "
            f"after training; this run had no validation split, or the weights are not the "
            f"ones the final evaluation used); use --threshold 0.5 or a number, or retrain "
            f"with a validation split (e.g. --val-fraction 0.1)")
    c = len(ckpt["classes"])
    per_class, glob = t.get("per_class"), t.get("global")
    ok = (isinstance(per_class, (list, tuple)) and len(per_class) == c
          and isinstance(glob, (int, float))
          and all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in [*per_class, glob]))
    if not ok:
        raise CheckpointError(f"{where}: malformed 'thresholds' entry (need 'per_class': {c} "
                              f"probabilities and 'global': one)")
    return [float(v) for v in per_class] if kind == "calibrated" else float(glob)


def model_from_checkpoint(path_or_ckpt, **expect):
    """Rebuild the model stored in a checkpoint (file path or loaded dict)."""
    from pyg_mlic.models import build_model

    ckpt = (path_or_ckpt if isinstance(path_or_ckpt, dict)
            else load_checkpoint(path_or_ckpt, **expect))
    kwargs = dict(ckpt["build_kwargs"])
    kwargs.pop("backbone_weights", None)  # the weights are in the state dict
    model = build_model(ckpt["model_name"], **kwargs)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit model {ckpt['model_name']!r}: "
                              f"{str(e)[:500]}") from None
    return model
