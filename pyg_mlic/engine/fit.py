"""The one training path: :func:`fit`.

``pyg-mlic train``, ``pyg-mlic demo``, the benchmarks and the notebooks all train
through this function, so that a training option is added in one place:

.. code-block:: python

    from pyg_mlic.engine import fit

    metrics = fit("ml_gcn", train, val, test,
                  model_options={"tau": 0.4, "backbone": "small_cnn"},
                  train_options={"epochs": 5, "optimizer": "adam", "lr": 2e-3},
                  out_dir="runs/x")

What it does, in order:

1. checks the splits against each other (classes, feature size, input kind) and every
   option against what the model, the recipe and :class:`TrainConfig` take — an unknown
   or misspelt option raises :class:`~pyg_mlic.errors.OptionError` before any work;
2. seeds every generator with the run's seed;
3. builds the model context from the *training* split (:func:`model_context`: classes,
   training labels for the label graph, feature size, label embeddings);
4. merges the model's paper defaults (``default_train_config``) under ``train_options``;
   on precomputed features (``input_kind="features"``) the features recipe
   (:data:`pyg_mlic.engine.recipes.FEATURES`: AdamW, dropout, enough steps, weights of the
   best validation epoch; without a validation split the epoch is chosen on a seeded 15 %
   of the training split held out, then the model is retrained on all of it) replaces them, and the encoder's input standardisation is set from
   the training split (:func:`~pyg_mlic.engine.context.fit_input_statistics`);
5. dispatches the recipe: the plain engine (:class:`Trainer`), or IML-GCN's two-stage
   recipe (:func:`pyg_mlic.engine.two_stage.run_two_stage`) for models marked
   ``two_stage`` or ``label_embeddings="image-features"``;
6. trains, evaluates the weights chosen on the validation split (or the last epoch) on the
   test split, writes ``metrics.json`` (with the resolved model, training and run
   configuration) and the checkpoints to ``out_dir``, and returns the metrics.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Mapping, Optional, Union

from pyg_mlic.data.base import check_splits
from pyg_mlic.engine.config import TrainConfig
from pyg_mlic.engine.context import CONTEXT_KEYS, fit_input_statistics, model_context
from pyg_mlic.engine.mixup import check_mixup_model
from pyg_mlic.errors import OptionError, check_options

__all__ = ["fit", "check_fit_options", "TWO_STAGE_KEYS", "uses_two_stage"]

#: model options read by the two-stage recipe (IML-GCN), not by the model
TWO_STAGE_KEYS = ("pca", "n_components", "on_missing", "stage1_model", "stage1_checkpoint",
                  "stage1_options", "embedding_batch_size")


def uses_two_stage(model: str, label_embeddings: Any = None) -> bool:
    """IML-GCN's two-stage recipe applies: the model is marked ``two_stage`` or the label
    embeddings are ``"image-features"``."""
    from pyg_mlic.models import get_model_class

    spec = label_embeddings.strip().lower() if isinstance(label_embeddings, str) else ""
    return spec == "image-features" or bool(getattr(get_model_class(model), "two_stage", False))


def _train_config(model_cls, train_options: Union[None, TrainConfig, Mapping[str, Any]],
                  owner: str) -> TrainConfig:
    if isinstance(train_options, TrainConfig):
        tc = train_options
    else:
        opts = dict(train_options or {})
        check_options(f"{owner} training", opts, TrainConfig.fields(), kind="training option")
        tc = TrainConfig.for_model(model_cls, **opts)
    check_mixup_model(model_cls, tc.mixup, owner)
    return tc


def check_fit_options(model: str, model_options: Optional[Mapping[str, Any]] = None,
                      train_options: Union[None, TrainConfig, Mapping[str, Any]] = None,
                      label_embeddings: Any = None, label_graph: Any = None) -> TrainConfig:
    """Check, without touching any data, what :func:`fit` would check first: the model
    name, every model / recipe option and every training option, and that the model takes
    a label graph when ``label_graph`` is given. Returns the resolved
    :class:`TrainConfig` (the model's paper defaults under ``train_options``).

    Raises:
        OptionError: an unknown option, naming it, a close match and the valid ones; a
            ``label_graph`` for a model without one (baseline, asl, a_gcn).
        ValueError: an unknown model name or an invalid training value.
    """
    from pyg_mlic.models import get_model_class
    from pyg_mlic.models.registry import model_option_names

    model_cls = get_model_class(model)  # unknown names raise here, listing the valid ones
    valid = set(model_option_names(model))
    if uses_two_stage(model, label_embeddings):
        valid |= set(TWO_STAGE_KEYS)
    check_options(model, [k for k in dict(model_options or {}) if k not in CONTEXT_KEYS], valid)
    if label_graph is not None and "label_graph" not in valid:
        from pyg_mlic.models import list_models

        takers = [m for m in list_models() if "label_graph" in model_option_names(m)]
        hint = (" (its label embeddings can come from the file: label_embeddings='npz:FILE',"
                " --label-embeddings npz:FILE)" if "label_embeddings" in valid else "")
        raise OptionError(f"{model} takes no label graph (label_graph= / --label-graph); "
                          f"the models with one: {', '.join(takers)}{hint}")
    return _train_config(model_cls, train_options, model)


def _fit_label_graph(label_graph: Any, train_set, options: Mapping[str, Any]):
    """``fit``'s ``label_graph``: a :class:`~pyg_mlic.graphs.LabelGraph` (a file is loaded
    with :meth:`~pyg_mlic.graphs.LabelGraph.load`) whose classes are the training split's,
    and which no ``tau`` / ``p`` / ``scheme`` / ``convention`` option contradicts."""
    from pyg_mlic.errors import check_same_classes
    from pyg_mlic.graphs import LabelGraph

    if "label_graph" in options:
        raise OptionError("fit: a label graph is given twice (label_graph= and "
                          "model_options['label_graph'])")
    if isinstance(label_graph, (str, os.PathLike)):
        graph = LabelGraph.load(label_graph)
    elif isinstance(label_graph, LabelGraph):
        graph = label_graph
    else:
        raise TypeError(f"fit: label_graph must be a label-graph .npz (pyg-mlic graph --out, "
                        f"LabelGraph.save) or a LabelGraph, got {type(label_graph).__name__}")
    where = (getattr(graph, "file_info", None) or {}).get("path") or "given"
    check_same_classes(f"label graph {where}", graph.classes, "training split",
                       train_set.classes)
    clash = {k: options[k] for k in ("tau", "p", "scheme", "convention")
             if k in options and options[k] != getattr(graph, k)}
    if clash:
        raise OptionError(f"fit: {', '.join(f'{k}={v!r}' for k, v in clash.items())} "
                          f"contradicts the label graph {where} (built with "
                          f"{', '.join(f'{k}={getattr(graph, k)!r}' for k in clash)}): rebuild "
                          f"it with those settings (pyg-mlic graph) or drop the option")
    return graph


def fit(model: Any, train_set, val_set=None, test_set=None, *,
        model_options: Optional[Mapping[str, Any]] = None,
        train_options: Union[None, TrainConfig, Mapping[str, Any]] = None,
        out_dir: Optional[Union[str, os.PathLike]] = None,
        label_embeddings: Any = None, label_graph: Any = None, resume: bool = False,
        run_info: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Train ``model`` on ``train_set`` and evaluate it; the library's one training path.

    Args:
        model (str or MultiLabelModel): a registered model name (built here from the
            training split's context and ``model_options``) or a model built already
            (then ``model_options`` must be empty; the plain recipe is used).
        train_set, val_set, test_set: the splits. ``val_set`` chooses the weights when
            ``select="best_val"``; the final evaluation uses ``test_set`` (``None``: the
            validation split, recorded as ``selection.evaluated_split``).
        model_options (dict): the model's options (``tau``, ``backbone``, ``widths`` ...;
            see each model's docstring) and, for the two-stage recipe, its options
            (:data:`TWO_STAGE_KEYS`). Unknown keys raise, naming the valid ones.
        train_options (dict or TrainConfig): :class:`TrainConfig` fields over the model's
            paper defaults (a dict), or a complete :class:`TrainConfig` used as is.
        out_dir: where ``metrics.json``, ``history.json`` and the checkpoints go
            (``None``: nothing is written; the two-stage recipe needs a folder).
        label_embeddings: a spec of :func:`~pyg_mlic.embeddings.load_label_embeddings`
            (``"onehot"``, ``"glove:PATH"`` ...), a ``[C, d]`` tensor, or
            ``"image-features"`` (IML-GCN's two-stage recipe). ``None`` for a model that
            takes label embeddings: the shipped GloVe vectors (``"glove"``) when every
            class name has one, else one-hot with a warning
            (:func:`~pyg_mlic.embeddings.default_label_embeddings`; recorded in
            ``metrics.json`` as ``label_embeddings`` / ``label_embeddings_default``).
            With a ``label_graph`` that holds embeddings, ``None`` means the file's.
        label_graph: a label-graph ``.npz`` (``pyg-mlic graph --out``,
            :meth:`~pyg_mlic.graphs.LabelGraph.save`) or a
            :class:`~pyg_mlic.graphs.LabelGraph`, for the models that take one (ml_gcn,
            ia_gcn, iml_gcn, gm_mlic): its statistics and operator replace those counted
            from ``train_set``'s labels. Its classes must be the training split's (same
            order). Recorded in ``metrics.json`` as ``settings.label_graph`` (path,
            ``sha256`` of the file, content hash, split, settings). IML-GCN's two-stage
            recipe keeps its image-feature embeddings unless told otherwise.
        resume (bool): continue the stopped run in ``out_dir``.
        run_info (dict): extra settings recorded in ``metrics.json`` and the checkpoint.

    Returns:
        dict: :func:`~pyg_mlic.metrics.multilabel_metrics` of the final evaluation plus
        ``selection``, ``settings`` (the resolved configuration) and ``history`` (the
        per-epoch records); two-stage runs add ``stage1`` and ``two_stage``.

    Raises:
        OptionError: an unknown model, recipe or training option (before any work).
        ClassMismatchError: splits with different classes or feature sizes.
    """
    import torch

    from pyg_mlic.engine.trainer import Trainer, seed_everything
    from pyg_mlic.models import build_model
    from pyg_mlic.models.base import MultiLabelModel

    check_splits(train_set, val_set, test_set)
    for name, value, kinds in (("model_options", model_options, "a dict"),
                               ("train_options", train_options, "a dict or a TrainConfig"),
                               ("run_info", run_info, "a dict")):
        if value is not None and not isinstance(value, Mapping) and \
                not (name == "train_options" and isinstance(value, TrainConfig)):
            raise TypeError(f"fit: {name} must be {kinds} (option name -> value), got "
                            f"{type(value).__name__}")
    options = dict(model_options or {})
    info: Dict[str, Any] = dict(run_info or {})
    # partial labels (pyg_mlic.data.partial.drop_labels): what was hidden, with its seed
    info.setdefault("partial_labels", getattr(train_set, "partial_labels", None))
    if isinstance(model, MultiLabelModel):
        if options:
            raise OptionError("fit: model_options are for a model given by name; this model "
                              f"is built already (got {sorted(options)})")
        if label_graph is not None:
            raise OptionError("fit: label_graph is for a model given by name; build this "
                              "model with label_graph= instead")
        tcfg, train_set, val_set, _, _, _ = _features_recipe(
            type(model), train_set, val_set, train_options, model.model_name, info,
            choose=False)
        seed_everything(tcfg.seed)
        # a resumed run reads its statistics from the checkpoint
        info["input_standardization"] = fit_input_statistics(model, train_set,
                                                             apply=not resume)
        trainer = Trainer(model, train_set, val_set, test_set, tcfg, out_dir=out_dir,
                          run_info=info)
        metrics = trainer.fit(resume=resume)
        metrics["history"] = list(trainer.history)
        return metrics
    if not isinstance(model, str):
        raise TypeError(f"fit: model must be a registered name or a MultiLabelModel, got "
                        f"{type(model).__name__}")
    tcfg = check_fit_options(model, options, train_options, label_embeddings, label_graph)
    from pyg_mlic.models.registry import model_option_names

    two_stage = uses_two_stage(model, label_embeddings)
    recipe = {k: options.pop(k) for k in TWO_STAGE_KEYS if k in options} if two_stage else {}
    if not two_stage:  # precomputed features: the features recipe, not the paper's images one
        from pyg_mlic.models import get_model_class

        tcfg, train_set, val_set, refit_set, candidates, folds = _features_recipe(
            get_model_class(model), train_set, val_set, train_options, model, info)
        if getattr(train_set, "input_kind", None) == "features":
            from pyg_mlic.engine.recipes import FEATURES_MODEL

            takes = set(model_option_names(model))
            added = {k: v for k, v in FEATURES_MODEL.items() if k in takes and k not in options}
            # the run records the user's model options; the recipe's additions apart
            info.setdefault("model_options", {k: v for k, v in options.items()
                                              if not isinstance(v, torch.Tensor)})
            options.update(added)
            info["features_model_options"] = added
    else:
        refit_set, candidates, folds = None, [], []
    graph = None if label_graph is None else _fit_label_graph(label_graph, train_set, options)
    if graph is not None:
        info["label_graph"] = graph.describe()
        if label_embeddings is None and graph.x is not None:
            if two_stage:
                import warnings

                warnings.warn(f"{model}: the label embeddings are built from stage-1 image "
                              f"features (its recipe); the label graph's own embeddings are "
                              f"not used (label_embeddings='npz:FILE' uses them)", UserWarning,
                              stacklevel=2)
            else:
                label_embeddings = graph.x
                info["label_embeddings"] = f"label graph ({info['label_graph']['embeddings']})"
    seed = tcfg.seed
    emb_is_spec = isinstance(label_embeddings, str)
    info.setdefault("label_embeddings", label_embeddings if emb_is_spec or label_embeddings
                    is None else f"<tensor {list(label_embeddings.shape)}>")
    info.setdefault("model_options", {k: v for k, v in options.items()
                                      if not isinstance(v, torch.Tensor)})
    info.setdefault("train_split", getattr(train_set, "split", None))
    # the resolved preprocessing (normalisation of the backbone's weights, augmentation):
    # eval and predict rebuild the test transform from it
    info.setdefault("data_config", getattr(train_set, "data_config", None))
    info.setdefault("val_split", getattr(val_set, "split", None))
    if two_stage:
        from pyg_mlic.engine.two_stage import run_two_stage

        if out_dir is None:
            raise OptionError(f"fit: the two-stage recipe of {model} needs out_dir (stage 1, "
                              f"the embedding cache and stage 2 are written there)")
        if label_embeddings is None:
            label_embeddings = "image-features"
        image_features = isinstance(label_embeddings, str) and \
            label_embeddings.strip().lower() == "image-features"
        embeddings = label_embeddings
        if isinstance(label_embeddings, str) and not image_features:
            embeddings = model_context(train_set, label_embeddings=label_embeddings)[
                "label_embeddings"]
        info["recipe"] = {k: (str(v) if isinstance(v, os.PathLike) else v)
                          for k, v in recipe.items()}
        # each stage merges the user's training options over its own model's defaults;
        # a complete TrainConfig is used as is by both stages
        stages: Dict[str, Any] = (dict(stage1_config=tcfg, stage2_config=tcfg)
                                  if isinstance(train_options, TrainConfig)
                                  else dict(train_overrides=dict(train_options or {})))
        return run_two_stage(train_set, val_set, test_set, out_dir=out_dir, model=model,
                             model_options={**model_context(train_set), **options,
                                            **({} if graph is None else {"label_graph": graph})},
                             label_embeddings=embeddings, resume=resume, run_info=info,
                             seed=seed, **stages, **recipe)
    if label_embeddings is None and "label_embeddings" in model_option_names(model):
        # the graph methods' input: word vectors of the class names when they all have one
        # (the papers' setting), else one-hot, said loudly
        from pyg_mlic.embeddings import default_label_embeddings

        label_embeddings, why = default_label_embeddings(train_set.classes)
        emb_is_spec = True
        info["label_embeddings"] = label_embeddings
        info["label_embeddings_default"] = why
        if label_embeddings == "onehot":
            import warnings

            warnings.warn(f"{model}: no label embeddings given and {why}: using one-hot "
                          f"vectors (pass label_embeddings= / --label-embeddings to choose)",
                          UserWarning, stacklevel=2)
    spec = label_embeddings if emb_is_spec else None

    def _build(split, statistics: bool = True):
        seed_everything(seed)  # the model's initialisation is part of the seeded run
        ctx = model_context(split, label_embeddings=spec)
        if label_embeddings is not None and not emb_is_spec:
            ctx["label_embeddings"] = label_embeddings
        if graph is not None:
            ctx["label_graph"] = graph
        built = build_model(model, **{**ctx, **options})
        # a resumed run reads its statistics from the checkpoint
        info["input_standardization"] = fit_input_statistics(built, split, apply=statistics)
        return built

    if len(candidates) > 1 or refit_set is not None:
        # features recipe: each candidate setting (FEATURES["choose"], the options the user
        # did not give) trains on the training rows of each fold and is scored on that
        # fold's validation rows (the given validation split; else k seeded folds of the
        # training split, or one seeded hold-out for a large one), in memory. The best
        # validation mAP averaged over the folds chooses the setting (ties: the first,
        # the recipe's default) and, without a validation split, the epoch and the kind
        # of weights (raw or EMA), after which the model is retrained on every training
        # row for that many epochs. Never the test split.
        tried = []
        for cand in candidates or [{}]:
            cfg = dataclasses.replace(tcfg, **cand)
            histories = []
            for tr, va in folds:
                sel = Trainer(_build(tr), tr, va, va, cfg, out_dir=None, run_info=dict(info))
                sel.fit()
                histories.append(sel.history)
            tried.append((cand, *_mean_validation_curve(histories)))
        best = max(range(len(tried)), key=lambda i: (tried[i][1]["val_mAP"], -i))
        cand, chosen, curve = tried[best]
        tcfg = dataclasses.replace(tcfg, **cand)
        if len(tried) > 1:
            info["features_recipe"]["chosen"] = dict(cand)
            info["features_recipe"]["candidates"] = [
                {"options": dict(c), "val_mAP": ch["val_mAP"], "epoch": ch["epoch"],
                 "weights": ch["weights"]} for c, ch, _ in tried]
        if refit_set is not None:
            epochs = max(1, int(chosen["epoch"]) + 1)
            # the refit ends on the kind of weights that won on the held-out rows: the
            # EMA's when they did (select="last" evaluates them), else the raw weights
            # (no EMA kept; it does not change the trajectory)
            weights = chosen["weights"]
            info["features_recipe"]["refit"] = {
                "epochs": epochs, "held_out_best_mAP": chosen["val_mAP"], "weights": weights,
                "ema": tcfg.ema, "held_out_history": curve}
            tcfg = dataclasses.replace(tcfg, epochs=epochs, select="last",
                                       ema=tcfg.ema if weights == "ema" else None)
            train_set, val_set = refit_set, None
    net = _build(train_set, statistics=not resume)
    trainer = Trainer(net, train_set, val_set, test_set, tcfg, out_dir=out_dir, run_info=info)
    metrics = trainer.fit(resume=resume)
    metrics["history"] = list(trainer.history)
    return metrics


def _mean_validation_curve(histories):
    """``(best, curve)`` of per-fold training histories: ``curve`` is the validation mAP
    of each evaluated epoch averaged over the folds (``val_mAP``, and ``val_mAP_ema``
    when the EMA was evaluated), ``best`` its maximum over epochs and kinds of weights
    (``{"epoch", "val_mAP", "weights"}``; ties: the earlier epoch, raw before EMA)."""
    import numpy as np

    curve, best = [], None
    for epoch in range(min(len(h) for h in histories)):
        rows = [h[epoch] for h in histories]
        rec = {"epoch": epoch}
        for key, weights in (("val_mAP", "raw"), ("val_mAP_ema", "ema")):
            vals = [r.get(key) for r in rows]
            if any(v is None for v in vals):
                continue
            rec[key] = float(np.mean(vals))
            if best is None or rec[key] > best["val_mAP"]:
                best = {"epoch": epoch, "val_mAP": rec[key], "weights": weights}
        if len(rec) > 1:
            curve.append(rec)
    if best is None:
        raise RuntimeError("features recipe: no epoch was evaluated on the validation rows")
    return best, curve


def _features_recipe(model_cls, train_set, val_set,
                     train_options: Union[None, TrainConfig, Mapping[str, Any]], owner: str,
                     info: Dict[str, Any], choose: bool = True):
    """``(TrainConfig, train_set, val_set, refit_set, candidates, folds)`` of a run on
    precomputed features: the features recipe (:data:`pyg_mlic.engine.recipes.FEATURES`)
    key by key under the user's ``train_options``, in place of the model's paper (image)
    defaults.

    Without a validation split and with ``select="best_val"``, the epoch is chosen on
    rows of the training split: ``folds`` are :func:`~pyg_mlic.engine.recipes.cv_folds`
    seeded folds (``[(train, val), ...]``) of a training split of at most
    ``FEATURES["cv_max_rows"]`` rows, else one seeded hold-out of
    :data:`~pyg_mlic.engine.recipes.FEATURES_VAL_FRACTION` (also what ``train_set`` /
    ``val_set`` are, for a model given built, ``choose=False``); ``refit_set`` (the
    whole training split, else ``None``) is what the model is then retrained on for that
    many epochs. With a validation split, ``folds`` is ``[(train_set, val_set)]``.
    ``candidates`` are the settings to choose between on the validation rows
    (:func:`~pyg_mlic.engine.recipes.features_candidates`; ``[]`` when there is nothing
    to choose, a model given built or no validation rows). A complete
    :class:`TrainConfig` is used as is, and so are image datasets. What was applied is
    recorded in ``info["features_recipe"]``."""
    if getattr(train_set, "input_kind", None) != "features" or \
            isinstance(train_options, TrainConfig):
        return (_train_config(model_cls, train_options, owner), train_set, val_set, None, [],
                [])
    from pyg_mlic.data.base import SubsetDataset, holdout_split
    from pyg_mlic.engine.recipes import (FEATURES, FEATURES_VAL_FRACTION, cv_folds,
                                         features_candidates, features_train_options)

    user = {k: v for k, v in dict(train_options or {}).items() if v is not None}
    check_options(f"{owner} training", user, TrainConfig.fields(), kind="training option")
    resolved = features_train_options(len(train_set), user, model=owner)
    applied = {k: v for k, v in resolved.items() if k not in user}
    tcfg = TrainConfig(**resolved)
    held_out, full = None, train_set
    folds = [(train_set, val_set)] if val_set is not None else []
    if val_set is None and tcfg.select == "best_val":
        n = len(train_set)
        n_val = int(round(n * FEATURES_VAL_FRACTION))
        k = int(FEATURES["cv_folds"])
        if choose and k >= 2 and k <= n // 2 and n <= int(FEATURES["cv_max_rows"]):
            folds = [(SubsetDataset(train_set, tr, split=f"{train_set.split}-fold{i}-train"),
                      SubsetDataset(train_set, va, split=f"{train_set.split}-fold{i}-val"))
                     for i, (tr, va) in enumerate(cv_folds(n, k, seed=tcfg.seed))]
            train_set, val_set = folds[0]
            held_out = {"folds": k, "seed": tcfg.seed, "num_rows": n}
        elif n_val >= 1 and n - n_val >= 1:
            train_set, val_set = holdout_split(train_set, FEATURES_VAL_FRACTION, seed=tcfg.seed)
            folds = [(train_set, val_set)]
            held_out = {"fraction": FEATURES_VAL_FRACTION, "seed": tcfg.seed,
                        "num_val": len(val_set), "num_train": len(train_set)}
        elif "select" not in user:  # too few rows to hold any out: the last epoch
            tcfg = TrainConfig(**{**resolved, "select": "last"})
            applied["select"] = "last"
    candidates = features_candidates(user) if choose and val_set is not None and \
        tcfg.select == "best_val" else []
    info["features_recipe"] = {"applied": applied, "val_holdout": held_out}
    if len(candidates) > 1:
        info["features_recipe"]["choose"] = {k: [c[k] for c in candidates]
                                             for k in candidates[0]}
    return (tcfg, train_set, val_set, full if held_out is not None else None, candidates,
            folds)
