r"""The two-stage IML-GCN recipe (Singh et al., Sec. "Image feature embeddings").

.. code-block:: text

    stage 1   train the encoder with a linear head        OUT/stage1/{last.pt, final.pt, metrics.json}
    embed     mean GAP feature per label (+ PCA)          OUT/embeddings/ (cache, resumable)
    stage 2   iml_gcn, encoder initialised from stage 1   OUT/{last.pt, metrics.json}

Partial labels (a training ``label_mask`` with unknown entries: VOC *difficult*,
``--drop-labels``): both stages' losses ignore the unknown entries, stage 2's label graph
counts only pairs of known entries (``train_label_mask``), and the embedding of a label
averages the images *known* to hold it (Eq. 5 over known positives only, see
:mod:`pyg_mlic.embeddings.image_features`).

Progress is recorded in ``OUT/stages.json`` (written atomically after each stage), so a
run stopped anywhere restarts at the right place with ``resume=True``: a finished stage 1
is loaded from ``stage1/final.pt`` (not retrained), an unfinished one continues from its
last epoch, the embedding pass resumes from its partial sums, and stage 2 continues from
``OUT/last.pt``. Every model is built right after seeding with the run's seed, and the
engine reseeds every epoch, so an interrupted run ends with the metrics of an
uninterrupted one.
"""
from __future__ import annotations

import copy
import inspect
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from pyg_mlic.engine.checkpoint import model_from_checkpoint, save_checkpoint
from pyg_mlic.engine.config import TrainConfig
from pyg_mlic.engine.trainer import Trainer, seed_everything
from pyg_mlic.utils.io import atomic_write_json

__all__ = ["run_two_stage", "eval_view", "read_stages", "STAGES_FILE"]

STAGES_FILE = "stages.json"
_STOP_POINTS = (None, "stage1", "embeddings")


def read_stages(out_dir: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The progress marker of a two-stage run (``{}`` when there is none)."""
    f = Path(out_dir) / STAGES_FILE
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:  # written atomically, so this is a foreign file
        raise ValueError(f"{f}: not a two-stage progress file ({e})") from None


def _write_stages(out_dir: Path, state: Dict[str, Any]) -> None:
    atomic_write_json(out_dir / STAGES_FILE, state)


def eval_view(dataset):
    """``dataset`` with its random training transform replaced by the matching test-time
    :class:`~pyg_mlic.data.transforms.ResizeTransform` (a shallow copy; the labels and
    images are shared). Datasets without a random transform are returned unchanged."""
    from pyg_mlic.data.base import SubsetDataset
    from pyg_mlic.data.transforms import RandomCropResizeTransform, ResizeTransform

    if isinstance(dataset, SubsetDataset):
        base = eval_view(dataset.dataset)
        if base is dataset.dataset:
            return dataset
        view = copy.copy(dataset)
        view.dataset = base
        return view
    tf = getattr(dataset, "transform", None)
    if not isinstance(tf, RandomCropResizeTransform):
        return dataset
    view = copy.copy(dataset)
    view.transform = ResizeTransform(tf.size, mean=tf.mean, std=tf.std)
    return view


def _config(model_cls, config: Union[None, TrainConfig, Mapping[str, Any]],
            overrides: Mapping[str, Any]) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    return TrainConfig.for_model(model_cls, **{**dict(overrides), **dict(config or {})})


def run_two_stage(train_set, val_set=None, test_set=None, *,
                  out_dir: Union[str, os.PathLike],
                  model: str = "iml_gcn", model_options: Optional[Mapping[str, Any]] = None,
                  stage1_model: str = "asl",
                  stage1_options: Optional[Mapping[str, Any]] = None,
                  train_overrides: Optional[Mapping[str, Any]] = None,
                  stage1_config: Union[None, TrainConfig, Mapping[str, Any]] = None,
                  stage2_config: Union[None, TrainConfig, Mapping[str, Any]] = None,
                  label_embeddings: Any = "image-features", pca: bool = True,
                  n_components: Optional[int] = None, on_missing: str = "error",
                  embed_set=None, embedding_cache: Optional[Union[str, os.PathLike]] = None,
                  embedding_batch_size: int = 32,
                  stage1_checkpoint: Optional[Union[str, os.PathLike]] = None,
                  resume: bool = False, stop_after: Optional[str] = None,
                  run_info: Optional[Mapping[str, Any]] = None,
                  seed: Optional[int] = None) -> Dict[str, Any]:
    r"""Train IML-GCN with its two-stage recipe (see the module docstring).

    Args:
        train_set, val_set, test_set: the splits (``val_set`` may be ``None``; the final
            evaluation uses ``test_set``, else ``val_set``).
        out_dir: output folder (stage 2 writes ``metrics.json`` and ``last.pt`` here,
            stage 1 under ``stage1/``).
        model (str): the stage-2 model. (default: :obj:`"iml_gcn"`)
        model_options (dict): build options shared by both stages (``input_kind``,
            ``in_features``, ``backbone``, ``backbone_weights``, ``train_labels``,
            ``train_label_mask`` ...;
            e.g. :func:`pyg_mlic.engine.model_context`) plus the stage-2 model's own
            (``tau``, ``gcn_hidden``, ``asl_*`` ...). Both stages must build the same
            encoder, so encoder options go here.
        stage1_model (str): the stage-1 model: ``"asl"`` (backbone + GAP + linear head,
            ASL loss: the paper's stage 1) or ``"baseline"`` (BCE). (default: ``"asl"``)
        stage1_options (dict): extra options of the stage-1 model only.
        train_overrides (dict): :class:`TrainConfig` fields applied to both stages on top
            of each model's paper defaults (``epochs``, ``batch_size``, ``seed`` ...).
        stage1_config, stage2_config: a full :class:`TrainConfig` or per-stage overrides.
        label_embeddings: ``"image-features"`` (IML-GCN), or another spec / ``[C, d]``
            tensor (Table 3's ablation; the encoder is still initialised from stage 1).
        pca (bool): Eq. 6 (:math:`\mathbf{F}_{PCA}`); ``False``: :math:`\mathbf{F}_I`.
        n_components (int, optional): PCA size :math:`n` (default :math:`C`).
        on_missing (str): labels without training images (see
            :func:`~pyg_mlic.embeddings.image_features.image_feature_embeddings`).
        embed_set: the training images for the embedding pass (default: ``train_set``
            with its random augmentation replaced by the test transform, :func:`eval_view`).
        embedding_cache: cache folder of the embedding pass (default ``OUT/embeddings``).
        embedding_batch_size (int): batch size of the embedding pass.
        stage1_checkpoint: use this trained stage-1 checkpoint (any model with an
            ``encoder`` of the same architecture, e.g. a ``baseline`` run) and skip stage 1.
        resume (bool): continue a stopped run in ``out_dir`` (see the module docstring).
            ``False`` starts over (existing files are overwritten).
        stop_after (str, optional): ``"stage1"`` or ``"embeddings"``: stop there (the
            progress file records it; rerun with ``resume=True`` to continue).
        run_info (dict): recorded in both ``metrics.json``.
        seed (int, optional): the run's seed (default: ``train_overrides["seed"]`` or 0).

    Returns:
        dict: the stage-2 metrics (:func:`~pyg_mlic.metrics.multilabel_metrics` plus
        settings) with ``"stage1"`` (the stage-1 metrics, or ``None`` when a given
        checkpoint was used), ``"two_stage"`` (what was trained / resumed / reused) and
        ``"history"`` (stage 2's per-epoch records); after
        ``stop_after`` only ``{"stopped_after": ..., "stage1": ...}``.
    """
    import pyg_mlic.models.iml_gcn  # noqa: F401  (registers iml_gcn and asl)
    from pyg_mlic.models import build_model, get_model_class

    if stop_after not in _STOP_POINTS:
        raise ValueError(f"stop_after must be one of {_STOP_POINTS}, got {stop_after!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    overrides = dict(train_overrides or {})
    seed = int(seed if seed is not None else overrides.get("seed", 0) or 0)
    overrides["seed"] = seed
    opts = dict(model_options or {})
    opts.setdefault("classes", list(train_set.classes))
    opts.setdefault("train_labels", train_set.labels)
    opts.setdefault("train_label_mask", getattr(train_set, "label_mask", None))
    opts.setdefault("input_kind", getattr(train_set, "input_kind", "image"))
    if opts["input_kind"] == "features":
        opts.setdefault("in_features", int(train_set.feature_dim))
    opts.pop("label_embeddings", None)
    opts.pop("label_embeddings_spec", None)
    if opts["input_kind"] == "image":
        # both stages must build the same encoder: default to the stage-2 model's backbone
        # and pooling (IML-GCN: TResNet-M, GAP)
        params = inspect.signature(get_model_class(model)).parameters
        for key in ("backbone", "pool"):
            if key not in opts and key in params and \
                    params[key].default is not inspect.Parameter.empty:
                opts[key] = params[key].default
    info = dict(run_info or {})
    state = read_stages(out) if resume else {}
    if not resume and (out / STAGES_FILE).exists():
        (out / STAGES_FILE).unlink()
    actions: Dict[str, str] = {}

    # ------------------------------------------------------------ stage 1
    stage1_metrics: Optional[Dict[str, Any]] = None
    s1_dir = out / "stage1"
    if stage1_checkpoint is not None:
        stage1 = model_from_checkpoint(stage1_checkpoint, expect_classes=opts["classes"])
        actions["stage1"] = f"given checkpoint {stage1_checkpoint}"
        state.update(stage1="done", stage1_checkpoint=str(stage1_checkpoint))
    elif state.get("stage1") == "done" and Path(state.get("stage1_checkpoint", "")).is_file():
        stage1 = model_from_checkpoint(state["stage1_checkpoint"], expect_classes=opts["classes"])
        stage1_metrics = state.get("stage1_metrics")
        actions["stage1"] = "loaded (finished earlier)"
    else:
        s1_cls = get_model_class(stage1_model)
        common = {k: v for k, v in opts.items()
                  if k in ("classes", "input_kind", "in_features", "backbone",
                           "backbone_weights", "pool", "encoder_hidden", "encoder_out",
                           "train_labels", "train_label_mask")}
        seed_everything(seed)
        stage1 = build_model(stage1_model, **{**common, **dict(stage1_options or {})})
        cfg1 = _config(s1_cls, stage1_config, overrides)
        resume1 = resume and (s1_dir / "last.pt").is_file()
        trainer = Trainer(stage1, train_set, val_set, test_set, cfg1, out_dir=s1_dir,
                          run_info={**info, "two_stage": "stage1"})
        stage1_metrics = trainer.fit(resume=resume1)
        save_checkpoint(s1_dir / "final.pt", model=stage1,
                        extra={"selection": stage1_metrics.get("selection")})
        actions["stage1"] = "resumed" if resume1 else "trained"
        state.update(stage1="done", stage1_checkpoint=str(s1_dir / "final.pt"),
                     stage1_model=stage1_model,
                     stage1_metrics={k: v for k, v in stage1_metrics.items()
                                     if k not in ("AP", "settings")})
    _write_stages(out, state)
    if stop_after == "stage1":
        return {"stopped_after": "stage1", "stage1": stage1_metrics, "two_stage": actions}

    # ------------------------------------------------------------ embeddings
    if isinstance(label_embeddings, str) and label_embeddings.strip().lower() == "image-features":
        from pyg_mlic.embeddings.image_features import image_feature_embeddings

        cache = Path(embedding_cache) if embedding_cache is not None else out / "embeddings"
        progress = _config(get_model_class(model), stage2_config, overrides).progress
        E = image_feature_embeddings(stage1.encoder, embed_set if embed_set is not None
                                     else eval_view(train_set), n_components=n_components,
                                     pca=pca, batch_size=embedding_batch_size, cache_dir=cache,
                                     progress=bool(progress), on_missing=on_missing,
                                     classes=opts["classes"])
        emb_desc = {"spec": "image-features", "pca": pca, "n_components": int(E.size(1)),
                    "on_missing": on_missing, "cache": str(cache)}
    else:
        from pyg_mlic.models.ml_gcn import resolve_label_embeddings

        E = resolve_label_embeddings(opts["classes"], label_embeddings)
        emb_desc = {"spec": label_embeddings if isinstance(label_embeddings, str)
                    else f"<tensor {list(E.shape)}>"}
    state.update(embeddings="done", embeddings_info=emb_desc)
    _write_stages(out, state)
    if stop_after == "embeddings":
        return {"stopped_after": "embeddings", "stage1": stage1_metrics, "two_stage": actions}

    # ------------------------------------------------------------ stage 2
    seed_everything(seed)
    m2 = build_model(model, **{**opts, "label_embeddings": E})
    try:
        m2.encoder.load_state_dict(stage1.encoder.state_dict())
    except RuntimeError as e:
        raise ValueError(f"the stage-1 encoder ({type(stage1.encoder).__name__}) does not fit "
                         f"the {model} encoder: build both with the same backbone / encoder "
                         f"options ({str(e)[:300]})") from None
    cfg2 = _config(get_model_class(model), stage2_config, overrides)
    resume2 = resume and state.get("stage2") in ("running", "done") and (out / "last.pt").is_file()
    state["stage2"] = "running"
    _write_stages(out, state)
    trainer = Trainer(m2, train_set, val_set, test_set, cfg2, out_dir=out,
                      run_info={**info, "two_stage": {
                          "stage1_checkpoint": state["stage1_checkpoint"],
                          "stage1_model": state.get("stage1_model", "?"),
                          "embeddings": emb_desc}})
    metrics = trainer.fit(resume=resume2)
    actions["stage2"] = "resumed" if resume2 else "trained"
    state["stage2"] = "done"
    _write_stages(out, state)
    metrics["stage1"] = stage1_metrics
    metrics["two_stage"] = actions
    metrics["history"] = list(trainer.history)
    return metrics
