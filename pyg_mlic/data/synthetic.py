r"""Synthetic scenes: the procedurally generated multi-label dataset behind ``pyg-mlic demo``.

It runs on a fresh machine with no data and no internet, yet has what makes the
graph-based methods worth having:

* **several objects per image** (``boxes`` / ``box_labels`` are the true object
  extents, so region and instance methods have something to work with), drawn with
  PIL on a textured, cluttered background together with *distractor* shapes that
  belong to no class;
* **a real label co-occurrence structure**. Each image first draws a latent scene
  :math:`s` (street, park, beach, office, kitchen — never rendered: the background
  does not depend on it), then its labels:

  .. math::
      s \sim \mathrm{Cat}(\boldsymbol{\pi}), \qquad
      L_c \mid s \sim \mathrm{Bernoulli}(\theta_{s,c})
      \quad \text{for the root classes},

  .. math::
      L_c \mid s, L_{\mathrm{pa}(c)} \sim \mathrm{Bernoulli}\big(
      L_{\mathrm{pa}(c)}\,\rho_c + (1 - L_{\mathrm{pa}(c)})\,\theta_{s,c}\big)
      \quad \text{for the dependent classes},

  with ``traffic light → car``, ``mouse → laptop``, ``ball → dog`` and
  ``person → surfboard`` as (child → parent) pairs. Images with no label or with
  more labels than ``max_objects`` are redrawn. The result has the asymmetric
  conditionals ML-GCN builds its graph from (Chen et al., CVPR 2019, Eq. 6,
  :math:`P_{ij} = M_{ij} / N_i`): ``person`` appears in every scene, so
  :math:`P(\text{person} \mid \text{surfboard}) \approx 0.95` while
  :math:`P(\text{surfboard} \mid \text{person}) \approx 0.1`; ``mouse`` almost
  always comes with ``laptop`` but not the other way round;
* **hard classes that are easy to infer from context**: ``traffic light``,
  ``ball``, ``mouse``, ``cup`` and ``bottle`` are small (3–12 px at 64 x 64),
  ``mouse`` and ``bottle`` are strongly blended into the background (low contrast;
  the other hard classes mildly), and hard objects are drawn first so that others
  partially occlude them, while their partners (``car``, ``dog``, ``laptop``,
  ``oven``) are large and saturated.

Determinism: the labels of a split are drawn up front, in blocks of
:data:`LABEL_BLOCK` images, each from a :class:`numpy.random.Generator` seeded
with the stable key ``(seed, split, "labels", block)``; the pixels and boxes of
image ``i`` come from a generator seeded with ``(seed, split, "image", i)``.
Nothing depends on Python's salted :func:`hash`, the process or the worker, so
DataLoader workers and repeated calls give identical tensors, the first ``n``
images of a split do not depend on ``num_images``, and splits use disjoint
streams. Labels depend on ``(seed, split, max_objects)`` only, not on ``image_size``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from pyg_mlic.data.base import MultiLabelDataset, Sample
from pyg_mlic.data.transforms import ResizeTransform
from pyg_mlic.errors import DatasetError

__all__ = ["SyntheticScenes", "CLASSES", "SCENES", "DEFAULT_SIZES", "render_scene"]

#: The 15 object classes (column order of ``target``).
CLASSES: Tuple[str, ...] = (
    "person", "car", "traffic light", "bicycle", "tree", "dog", "ball", "umbrella",
    "surfboard", "boat", "laptop", "mouse", "cup", "oven", "bottle",
)
#: The latent scene types (drive the label distribution; never rendered).
SCENES: Tuple[str, ...] = ("street", "park", "beach", "office", "kitchen")
#: Number of images of each split when ``num_images`` is not given.
DEFAULT_SIZES: Dict[str, int] = {"train": 1200, "val": 300, "test": 600}
#: Labels are drawn in blocks of this many images (prefix-stable across ``num_images``).
LABEL_BLOCK = 256

_C = {name: i for i, name in enumerate(CLASSES)}
_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
_STREAM_LABELS, _STREAM_IMAGE = 11, 12
_MAGIC = 0x5C3E_5EED  # namespaces the generator keys of this module

#: Scene prior :math:`\pi`.
SCENE_PRIOR = np.array([0.24, 0.20, 0.20, 0.18, 0.18])
assert abs(SCENE_PRIOR.sum() - 1.0) < 1e-12

# theta[s, c]: P(L_c = 1 | scene s) (for dependent classes: when the parent is absent)
#                          street  park  beach office kitchen
_THETA_ROWS = {
    "person":        (0.70, 0.60, 0.55, 0.50, 0.40),
    "car":           (0.75, 0.05, 0.05, 0.00, 0.00),
    "traffic light": (0.03, 0.00, 0.00, 0.00, 0.00),
    "bicycle":       (0.35, 0.30, 0.03, 0.02, 0.00),
    "tree":          (0.40, 0.75, 0.10, 0.02, 0.00),
    "dog":           (0.08, 0.55, 0.10, 0.00, 0.02),
    "ball":          (0.01, 0.10, 0.15, 0.01, 0.00),
    "umbrella":      (0.10, 0.05, 0.60, 0.00, 0.00),
    "surfboard":     (0.00, 0.00, 0.35, 0.00, 0.00),
    "boat":          (0.00, 0.03, 0.50, 0.00, 0.00),
    "laptop":        (0.00, 0.00, 0.00, 0.85, 0.08),
    "mouse":         (0.00, 0.00, 0.00, 0.01, 0.00),
    "cup":           (0.02, 0.02, 0.00, 0.40, 0.45),
    "oven":          (0.00, 0.00, 0.00, 0.00, 0.70),
    "bottle":        (0.02, 0.05, 0.10, 0.05, 0.55),
}
#: :math:`\theta` as a ``[S, C]`` array.
THETA = np.array([_THETA_ROWS[c] for c in CLASSES], dtype=np.float64).T
#: (child, parent, rho): P(child | parent present) = rho, in sampling order.
DEPENDENCIES: Tuple[Tuple[str, str, float], ...] = (
    ("traffic light", "car", 0.55),
    ("mouse", "laptop", 0.65),
    ("ball", "dog", 0.50),
    ("person", "surfboard", 0.95),
)


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------

def _generator(seed: int, split: str, stream: int, index: int) -> np.random.Generator:
    """A generator keyed by a fixed-length integer tuple (stable across processes)."""
    return np.random.default_rng([_MAGIC, int(seed), _SPLIT_CODE[split], stream, int(index)])


def _draw_labels(scenes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw of the label model for images of the given scenes -> bool ``[n, C]``."""
    n = len(scenes)
    p = THETA[scenes]
    u = rng.random((n, len(CLASSES)))
    y = u < p  # roots are final; dependents are recomputed below
    for child, parent, rho in DEPENDENCIES:
        c, q = _C[child], _C[parent]
        y[:, c] = u[:, c] < np.where(y[:, q], rho, p[:, c])
    return y


def _label_block(seed: int, split: str, block: int, max_objects: int
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Scenes ``[B]`` and labels ``[B, C]`` of block ``block`` of a split."""
    rng = _generator(seed, split, _STREAM_LABELS, block)
    scenes = rng.choice(len(SCENES), size=LABEL_BLOCK, p=SCENE_PRIOR)
    y = _draw_labels(scenes, rng)
    for _ in range(100):  # redraw images with no label or too many labels
        k = y.sum(1)
        bad = np.flatnonzero((k == 0) | (k > max_objects))
        if len(bad) == 0:
            break
        y[bad] = _draw_labels(scenes[bad], rng)
    else:  # only reachable with a tiny max_objects: trim / fill deterministically
        for i in np.flatnonzero(y.sum(1) > max_objects):
            keep = rng.choice(np.flatnonzero(y[i]), size=max_objects, replace=False)
            y[i] = False
            y[i, keep] = True
        for i in np.flatnonzero(y.sum(1) == 0):
            y[i, int(np.argmax(THETA[scenes[i]]))] = True
    return scenes.astype(np.int64), y.astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------

_CIRCLE16 = np.stack([np.cos(np.linspace(0, 2 * np.pi, 16, endpoint=False)),
                      np.sin(np.linspace(0, 2 * np.pi, 16, endpoint=False))], 1)


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return _CIRCLE16 * [rx, ry] + [cx, cy]


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _pts(*xy: float) -> np.ndarray:
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2)


@dataclass(frozen=True)
class _Part:
    """A polygon (``width == 0``) or a polyline of relative ``width`` in local coordinates."""
    pts: np.ndarray
    colour: Tuple[int, int, int]
    width: float = 0.0
    closed: bool = False


@dataclass(frozen=True)
class _Spec:
    """How one class (or distractor) is drawn.

    ``size`` is the range of the object's scale as a fraction of the image side (the
    local drawing spans about ``[-0.5, 0.5]``), ``rot`` the rotation range in degrees,
    ``blend`` the range of the opacity against the local background (low contrast
    when < 1), ``extra`` the probability of a second instance, ``behind`` whether the
    object tends to be drawn first (and thus partially occluded).
    """
    parts: Tuple[_Part, ...]
    size: Tuple[float, float]
    rot: Tuple[float, float] = (-10.0, 10.0)
    blend: Tuple[float, float] = (1.0, 1.0)
    extra: float = 0.0
    behind: bool = False

    @functools.cached_property
    def points(self) -> np.ndarray:
        """All parts' vertices stacked, ``[K, 2]`` (transformed in one product)."""
        return np.concatenate([p.pts for p in self.parts])

    @functools.cached_property
    def bounds(self) -> List[int]:
        """Row offsets of the parts in :attr:`points` (``len(parts) + 1`` entries)."""
        return np.cumsum([0] + [len(p.pts) for p in self.parts]).tolist()

    @functools.cached_property
    def counts(self) -> np.ndarray:
        return np.asarray([len(p.pts) for p in self.parts])


def _P(pts, colour, width=0.0, closed=False) -> _Part:
    return _Part(np.asarray(pts, dtype=np.float64), tuple(colour), width, closed)


_MIN_SCALE = 4.0  # pixels: the smallest object scale, whatever the image size
_half = np.linspace(np.pi, 2 * np.pi, 9)
_SPECS: Dict[str, _Spec] = {
    "person": _Spec((
        _P(_rect(-0.14, 0.15, 0.14, 0.5), (40, 45, 120)),
        _P(_rect(-0.2, -0.22, 0.2, 0.2), (205, 40, 45)),
        _P(_ellipse(0, -0.36, 0.13, 0.13), (235, 190, 150)),
    ), size=(0.24, 0.36), extra=0.35),
    "car": _Spec((
        _P(_pts(-0.3, -0.12, -0.17, -0.32, 0.2, -0.32, 0.32, -0.12), (140, 185, 245)),
        _P(_rect(-0.5, -0.13, 0.5, 0.14), (35, 75, 215)),
        _P(_ellipse(-0.3, 0.15, 0.11, 0.11), (25, 25, 25)),
        _P(_ellipse(0.3, 0.15, 0.11, 0.11), (25, 25, 25)),
    ), size=(0.26, 0.38), rot=(-8, 8), extra=0.25),
    "traffic light": _Spec((
        _P(_rect(-0.17, -0.5, 0.17, 0.5), (45, 45, 45)),
        _P(_ellipse(0, -0.3, 0.1, 0.1), (200, 40, 40)),
        _P(_ellipse(0, 0.0, 0.1, 0.1), (210, 190, 40)),
        _P(_ellipse(0, 0.3, 0.1, 0.1), (40, 200, 70)),
    ), size=(0.12, 0.17), rot=(-5, 5), blend=(0.6, 0.9), behind=True),
    "bicycle": _Spec((
        _P(_ellipse(-0.3, 0.12, 0.2, 0.2), (20, 110, 60), 0.07, True),
        _P(_ellipse(0.3, 0.12, 0.2, 0.2), (20, 110, 60), 0.07, True),
        _P(_pts(-0.3, 0.12, -0.05, -0.2, 0.25, -0.2, 0.3, 0.12), (20, 110, 60), 0.07),
        _P(_pts(-0.05, -0.2, 0.0, 0.12, -0.3, 0.12), (20, 110, 60), 0.07),
    ), size=(0.22, 0.32)),
    "tree": _Spec((
        _P(_rect(-0.07, 0.2, 0.07, 0.5), (110, 70, 30)),
        _P(_pts(0, -0.5, -0.33, 0.22, 0.33, 0.22), (35, 150, 45)),
    ), size=(0.26, 0.40), rot=(-6, 6), extra=0.3),
    "dog": _Spec((
        _P(_rect(-0.28, 0.05, -0.2, 0.3), (110, 70, 30)),
        _P(_rect(0.15, 0.05, 0.23, 0.3), (110, 70, 30)),
        _P(_ellipse(-0.05, 0, 0.33, 0.15), (150, 95, 45)),
        _P(_ellipse(0.33, -0.15, 0.14, 0.12), (120, 75, 35)),
        _P(_pts(-0.37, -0.02, -0.5, -0.18), (150, 95, 45), 0.05),
    ), size=(0.20, 0.30)),
    "ball": _Spec((
        _P(_ellipse(0, 0, 0.5, 0.5), (240, 240, 225)),
        _P(_pts(-0.45, 0, 0.45, 0), (200, 60, 60), 0.15),
    ), size=(0.06, 0.10), rot=(-90, 90), blend=(0.6, 0.9), behind=True),
    "umbrella": _Spec((
        _P(_pts(0, -0.1, 0, 0.5), (60, 60, 60), 0.05),
        _P(np.stack([0.5 * np.cos(_half), 0.35 * np.sin(_half) - 0.1], 1), (215, 40, 170)),
    ), size=(0.22, 0.34), rot=(-15, 15)),
    "surfboard": _Spec((
        _P(_ellipse(0, 0, 0.5, 0.11), (245, 205, 45)),
        _P(_pts(-0.4, 0, 0.4, 0), (210, 60, 40), 0.05),
    ), size=(0.26, 0.40), rot=(-90, 90)),
    "boat": _Spec((
        _P(_pts(-0.5, 0.05, 0.5, 0.05, 0.33, 0.3, -0.33, 0.3), (125, 65, 30)),
        _P(_pts(0, 0.05, 0, -0.5), (60, 40, 20), 0.04),
        _P(_pts(0.03, -0.48, 0.03, 0.0, 0.38, 0.0), (245, 245, 240)),
    ), size=(0.24, 0.34), rot=(-8, 8)),
    "laptop": _Spec((
        _P(_rect(-0.4, -0.45, 0.4, 0.08), (70, 70, 80)),
        _P(_rect(-0.33, -0.38, 0.33, 0.01), (110, 170, 225)),
        _P(_pts(-0.42, 0.08, 0.42, 0.08, 0.5, 0.3, -0.5, 0.3), (185, 185, 195)),
    ), size=(0.24, 0.34), rot=(-8, 8)),
    "mouse": _Spec((
        _P(_ellipse(0, 0, 0.3, 0.5), (160, 160, 170)),
        _P(_pts(0, -0.5, 0, -0.1), (80, 80, 90), 0.08),
    ), size=(0.07, 0.11), rot=(-30, 30), blend=(0.45, 0.7), behind=True),
    "cup": _Spec((
        _P(_ellipse(0.32, 0.05, 0.17, 0.17), (30, 160, 175), 0.1, True),
        _P(_rect(-0.32, -0.35, 0.32, 0.5), (40, 195, 210)),
        _P(_ellipse(0, -0.35, 0.32, 0.09), (20, 120, 135)),
    ), size=(0.09, 0.14), rot=(-10, 10), blend=(0.7, 1.0), behind=True),
    "oven": _Spec((
        _P(_rect(-0.5, -0.5, 0.5, 0.5), (55, 52, 58)),
        _P(_rect(-0.35, -0.12, 0.35, 0.38), (235, 145, 45)),
        _P(_ellipse(-0.3, -0.33, 0.07, 0.07), (200, 200, 200)),
        _P(_ellipse(0.0, -0.33, 0.07, 0.07), (200, 200, 200)),
        _P(_ellipse(0.3, -0.33, 0.07, 0.07), (200, 200, 200)),
    ), size=(0.28, 0.40), rot=(-4, 4)),
    "bottle": _Spec((
        _P(_rect(-0.16, -0.12, 0.16, 0.5), (30, 135, 75)),
        _P(_rect(-0.07, -0.5, 0.07, -0.12), (25, 110, 60)),
        _P(_rect(-0.16, 0.1, 0.16, 0.28), (225, 225, 200)),
    ), size=(0.12, 0.18), rot=(-10, 10), blend=(0.5, 0.75), behind=True),
}
assert set(_SPECS) == set(CLASSES)
_SPEC_LIST: List[_Spec] = [_SPECS[c] for c in CLASSES]


def _star(k: int, inner: float) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, 2 * k, endpoint=False) - np.pi / 2
    r = np.where(np.arange(2 * k) % 2 == 0, 0.5, 0.5 * inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _ngon(k: int) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, k, endpoint=False)
    return 0.5 * np.stack([np.cos(a), np.sin(a)], 1)


#: Shapes of the distractors (belong to no class; drawn in random colours).
_DISTRACTOR_SHAPES: Tuple[np.ndarray, ...] = (
    _star(5, 0.45), _star(4, 0.35), _ngon(6), _ngon(4), _ngon(5),
    _pts(-0.5, -0.15, -0.15, -0.15, -0.15, -0.5, 0.15, -0.5, 0.15, -0.15, 0.5, -0.15,
         0.5, 0.15, 0.15, 0.15, 0.15, 0.5, -0.15, 0.5, -0.15, 0.15, -0.5, 0.15),  # cross
    _pts(-0.5, -0.5, 0.5, -0.5, 0.5, -0.25, -0.25, -0.25, -0.25, 0.5, -0.5, 0.5),  # "L"
)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _noise_field(size: int) -> np.ndarray:
    """Fixed ``int16 [2S, 2S, 3]`` pixel-noise field (uniform in [-10, 10]); images use
    random ``S x S`` crops of it, which is much cheaper than fresh noise per image."""
    rng = np.random.default_rng([_MAGIC, size, 99])
    field = rng.integers(-10, 11, size=(2 * size, 2 * size, 3), dtype=np.int16)
    field.flags.writeable = False
    return field


def _overlap(box: List[float], others: List[List[float]]) -> float:
    """Largest intersection / (area of the smaller box) between ``box`` and ``others``."""
    worst = 0.0
    a = (box[2] - box[0]) * (box[3] - box[1])
    for o in others:
        iw = min(box[2], o[2]) - max(box[0], o[0])
        ih = min(box[3], o[3]) - max(box[1], o[1])
        if iw > 0 and ih > 0:
            b = (o[2] - o[0]) * (o[3] - o[1])
            worst = max(worst, iw * ih / max(min(a, b), 1e-9))
    return worst


def render_scene(labels: Sequence[int], rng: np.random.Generator, image_size: int = 64,
                 max_objects: int = 6, max_overlap: float = 0.4
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Draw one image containing every class in ``labels`` (and nothing else of a class).

    Each present class gets one instance (a second one with the class's ``extra``
    probability while fewer than ``max_objects`` instances are placed). Objects and
    1–3 distractors are scaled, rotated and colour-jittered, placed so that no box
    covers more than ``max_overlap`` of a smaller one (so occlusion stays partial),
    and drawn back to front over a smooth random background with block texture and
    clutter lines; a global brightness change and uniform pixel noise come last.

    Args:
        labels: multi-hot ``[C]`` row (0/1) of the image.
        rng: the image's generator (all randomness comes from it).
        image_size (int): side :math:`S` of the square image.
        max_objects (int): maximum number of labelled instances.
        max_overlap (float): bound on box intersection / smaller box area.

    Returns:
        ``(image, boxes, box_labels)``: ``uint8 [S, S, 3]``, ``float32 [M, 4]`` xyxy
        pixel boxes (the full geometric extent of each object, before occlusion) and
        ``int64 [M]`` class indices, ``M <= max_objects``.
    """
    labels = np.asarray(labels)
    if labels.shape != (len(CLASSES),):
        raise DatasetError(f"render_scene: labels must be a [{len(CLASSES)}] multi-hot row, "
                           f"got shape {labels.shape}")
    S = int(image_size)
    # background: smooth colour field + block texture
    k = int(rng.integers(2, 6))
    base = rng.uniform(60, 190, size=3)
    field = np.clip(base + rng.normal(0, 40, size=(k, k, 3)), 0, 255).astype(np.uint8)
    bg = np.asarray(Image.fromarray(field).resize((S, S), Image.BILINEAR), dtype=np.float32)
    b = max(2, S // 16)
    tex = rng.normal(0, 10, size=(S // b + 1, S // b + 1, 1)).astype(np.float32)
    bg = bg + np.repeat(np.repeat(tex, b, 0), b, 1)[:S, :S]
    bg_u8 = np.clip(bg, 0, 255).astype(np.uint8)
    img = Image.fromarray(bg_u8)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):  # clutter lines near the background colour
        xy = (rng.uniform(0, S, size=4)).tolist()
        col = tuple(int(v) for v in np.clip(base + rng.normal(0, 45, size=3), 0, 255))
        draw.line(xy, fill=col, width=int(rng.integers(1, max(2, S // 32) + 1)))

    # instances: (class or -1 for a distractor, depth key)
    present = [int(c) for c in np.flatnonzero(labels)]
    items: List[int] = list(present)
    for c in rng.permutation(present).tolist():
        if len(items) < max_objects and rng.random() < _SPEC_LIST[c].extra:
            items.append(int(c))
    items += [-1] * int(rng.integers(1, 4))
    depth = rng.random(len(items)) - np.array(
        [0.5 if c >= 0 and _SPEC_LIST[c].behind else 0.0 for c in items])
    order = np.argsort(depth, kind="stable")

    placed: List[List[float]] = []
    boxes: List[List[float]] = []
    box_labels: List[int] = []
    for i in order.tolist():
        c = items[i]
        if c >= 0:
            spec = _SPEC_LIST[c]
        else:
            shape = _DISTRACTOR_SHAPES[int(rng.integers(len(_DISTRACTOR_SHAPES)))]
            colour = tuple(int(v) for v in rng.integers(20, 236, size=3))
            spec = _Spec((_Part(shape, colour),), size=(0.10, 0.28), rot=(-180.0, 180.0))
        parts = spec.parts
        scale = max(S * rng.uniform(*spec.size), _MIN_SCALE)
        sx, sy = scale * rng.uniform(0.88, 1.12, size=2)
        th = math.radians(rng.uniform(*spec.rot))
        ct, st = math.cos(th), math.sin(th)
        rotm = np.array([[ct * sx, st * sx], [-st * sy, ct * sy]])  # p @ rotm = R diag(s) p
        geo = spec.points @ rotm
        widths = [max(1, int(round(p.width * scale))) if p.width > 0 else 0 for p in parts]
        if any(widths):  # polylines reach half their width beyond their vertices
            pad = np.repeat(np.asarray(widths, dtype=np.float64) / 2, spec.counts)[:, None]
            lo, hi = (geo - pad).min(0), (geo + pad).max(0)
        else:
            lo, hi = geo.min(0), geo.max(0)
        ext = hi - lo
        if ext.max() > S - 2:  # keep the whole object inside the image
            f = (S - 2) / ext.max()
            geo, lo, hi = geo * f, lo * f, hi * f
        (lx, ly), (hx, hy) = lo.tolist(), hi.tolist()
        best, best_ov = None, math.inf
        for _ in range(10):  # rejection sampling of the position (python floats: fast)
            ox, oy = rng.uniform(1 - lo, S - 1 - hi).tolist()
            box = [lx + ox, ly + oy, hx + ox, hy + oy]
            ov = _overlap(box, placed)
            if ov < best_ov:
                best, best_ov = (ox, oy, box), ov
            if ov <= max_overlap:
                break
        ox, oy, box = best
        off = np.array([ox, oy])
        placed.append(box)
        if c >= 0:
            boxes.append(box)
            box_labels.append(c)
            jitter = rng.normal(0, 14, size=3).tolist()
            alpha = float(rng.uniform(*spec.blend))
            cx = min(max(int((lx + hx) / 2 + ox), 0), S - 1)
            cy = min(max(int((ly + hy) / 2 + oy), 0), S - 1)
            local = [(1 - alpha) * float(v) for v in bg_u8[cy, cx]]
        bounds = spec.bounds
        for k, (p, w) in enumerate(zip(parts, widths)):
            g = geo[bounds[k]:bounds[k + 1]]
            if c >= 0:
                col = tuple(min(255, max(0, int(alpha * (p.colour[ch] + jitter[ch]) + local[ch])))
                            for ch in range(3))
            else:
                col = p.colour
            xy = g + off
            if w:
                if p.closed:
                    xy = np.concatenate([xy, xy[:1]])
                draw.line(xy.ravel().tolist(), fill=col, width=w)
            else:
                draw.polygon(xy.ravel().tolist(), fill=col)

    # global brightness (x 0.85 .. 1.15, fixed point /128) and pixel noise: a random crop
    # of a fixed noise field (uniform in [-10, 10], std ~6)
    arr = np.asarray(img).astype(np.int32)
    arr *= int(rng.integers(109, 148))
    arr >>= 7
    oy, ox = rng.integers(0, S, size=2).tolist()
    arr += _noise_field(S)[oy:oy + S, ox:ox + S]
    out = arr.clip(0, 255).astype(np.uint8)
    bx = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    bx = np.clip(bx, 0, S)
    return out, bx, np.asarray(box_labels, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------

Transform = Callable[[Image.Image, Optional[torch.Tensor]],
                     Tuple[torch.Tensor, Optional[torch.Tensor]]]


class SyntheticScenes(MultiLabelDataset):
    r"""Procedurally generated multi-label scenes with boxes and real label correlations.

    See the module docstring for the generative model (scene prior :math:`\pi`,
    per-scene label probabilities :math:`\theta`, parent/child dependencies) and the
    determinism guarantees. Labels for the whole split are drawn at construction
    (no rendering); images are rendered on demand in :meth:`__getitem__`.

    Args:
        split (str): ``"train"``, ``"val"`` or ``"test"`` (disjoint random streams).
            (default: :obj:`"train"`)
        num_images (int, optional): number of images; the first ``n`` images of a split
            are the same whatever ``num_images`` is. (default: :data:`DEFAULT_SIZES`
            of the split: 1200 / 300 / 600)
        image_size (int): side :math:`S` of the rendered square images (>= 16).
            (default: :obj:`64`)
        seed (int): non-negative seed of the whole dataset. (default: :obj:`0`)
        transform (callable, optional): ``(PIL image, boxes [M, 4]) -> (tensor [3, H, W],
            boxes)`` (see :mod:`pyg_mlic.data.transforms`); a random transform brings its
            own randomness. (default: :class:`ResizeTransform` ``(image_size)``: ImageNet
            normalisation, no resizing)
        max_objects (int): maximum number of labelled object instances per image; also
            caps the number of labels. (default: :obj:`6`)
        cache (bool): keep rendered ``uint8`` images (before the transform) in memory.
            Each DataLoader worker holds its own cache; call :meth:`warm_cache` before
            creating the loader to share a filled one. (default: :obj:`False`)

    Shapes:
        - **image:** :math:`(3, S, S)` float (after the default transform)
        - **target:** :math:`(C,)` float, :math:`C = 15`; **mask:** :math:`(C,)` bool, all True
        - **boxes:** :math:`(M, 4)` float xyxy pixels; **box_labels:** :math:`(M,)` long,
          :math:`1 \le M \le` ``max_objects``; every class of ``target`` has at least
          one box and every box's class is in ``target``.

    Example:
        >>> ds = SyntheticScenes("train", num_images=8)
        >>> s = ds[0]
        >>> s["image"].shape, s["target"].shape
        (torch.Size([3, 64, 64]), torch.Size([15]))
    """

    CLASSES: Tuple[str, ...] = CLASSES
    SCENES: Tuple[str, ...] = SCENES
    input_kind = "image"

    def __init__(self, split: str = "train", num_images: Optional[int] = None,
                 image_size: int = 64, seed: int = 0, transform: Optional[Transform] = None,
                 max_objects: int = 6, cache: bool = False) -> None:
        name = type(self).__name__
        if split not in _SPLIT_CODE:
            raise DatasetError(f"{name}: split must be one of {sorted(_SPLIT_CODE)}, "
                               f"got {split!r}")
        if num_images is None:
            num_images = DEFAULT_SIZES[split]
        if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) \
                or num_images < 1:
            raise DatasetError(f"{name}: num_images must be a positive int, got {num_images!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
                or image_size < 16:
            raise DatasetError(f"{name}: image_size must be an int >= 16, got {image_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DatasetError(f"{name}: seed must be a non-negative int, got {seed!r}")
        if isinstance(max_objects, bool) or not isinstance(max_objects, (int, np.integer)) \
                or max_objects < 1:
            raise DatasetError(f"{name}: max_objects must be an int >= 1, got {max_objects!r}")
        if transform is not None and not callable(transform):
            raise DatasetError(f"{name}: transform must be callable, got {type(transform)}")
        n, self.seed = int(num_images), int(seed)
        self.image_size, self.max_objects = int(image_size), int(max_objects)
        blocks = [_label_block(self.seed, split, b, self.max_objects)
                  for b in range((n + LABEL_BLOCK - 1) // LABEL_BLOCK)]
        #: Latent scene index of every image, ``int64 [N]`` (see :data:`SCENES`).
        self.scenes: np.ndarray = np.concatenate([s for s, _ in blocks])[:n]
        labels = np.concatenate([y for _, y in blocks])[:n]
        super().__init__(CLASSES, labels, None, split=split)
        self.transform: Transform = transform if transform is not None \
            else ResizeTransform(self.image_size)
        self.cache = bool(cache)
        self._cache: Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    # -- rendering ------------------------------------------------------------------------------
    def _check_index(self, index: int) -> int:
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"{type(self).__name__} ({self.split}): index {index} out of "
                             f"range for {n} images")
        return i % n

    def render_array(self, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render image ``index`` (no transform).

        Returns:
            ``(image uint8 [S, S, 3], boxes float32 [M, 4] xyxy pixels, box_labels int64 [M])``.
        """
        i = self._check_index(index)
        hit = self._cache.get(i)
        if hit is not None:
            return hit
        rng = _generator(self.seed, self.split, _STREAM_IMAGE, i)
        out = render_scene(self.labels[i], rng, self.image_size, self.max_objects)
        if self.cache:
            self._cache[i] = out
        return out

    def render(self, index: int) -> Tuple[Image.Image, np.ndarray, np.ndarray]:
        """Like :meth:`render_array` but returns a ``PIL.Image`` (RGB, ``S x S``)."""
        arr, boxes, box_labels = self.render_array(index)
        return Image.fromarray(arr), boxes, box_labels

    def warm_cache(self) -> "SyntheticScenes":
        """Render every image into the cache now (turns ``cache`` on); returns ``self``."""
        self.cache = True
        for i in range(len(self)):
            self.render_array(i)
        return self

    def __getitem__(self, index: int) -> Sample:
        i = self._check_index(index)
        img, boxes, box_labels = self.render(i)
        out = self.transform(img, torch.from_numpy(boxes.copy()))
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor)):
            raise DatasetError(f"{type(self).__name__}: transform {self.transform!r} must "
                               f"return (tensor, boxes), got {type(out)}")
        image, tboxes = out
        sample = self._target(i)
        sample["image"] = image
        sample["boxes"] = tboxes.float() if tboxes is not None else torch.zeros(0, 4)
        sample["box_labels"] = torch.from_numpy(box_labels.copy())
        return sample

    # -- introspection --------------------------------------------------------------------------
    def scene_of(self, index: int) -> str:
        """Name of the latent scene type of image ``index``."""
        return SCENES[int(self.scenes[self._check_index(index)])]

    def conditional_probabilities(self) -> np.ndarray:
        r""":math:`P(L_j \mid L_i) = M_{ij} / N_i` from this split's labels (ML-GCN Eq. 6).

        Returns:
            ``float64 [C, C]``, row ``i`` conditioned on class ``i``; zero diagonal and
            zero rows for classes that never occur.
        """
        y = self.labels.astype(np.int64)
        m = y.T @ y
        n = np.diag(m).copy()
        np.fill_diagonal(m, 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(n[:, None] > 0, m / np.maximum(n, 1)[:, None], 0.0)
        return p

    def describe(self, top: int = 6) -> str:
        """Human-readable summary: sizes, scene and class frequencies, mean labels per
        image and the ``top`` most asymmetric conditional pairs :math:`P(j|i)` vs
        :math:`P(i|j)`."""
        y = self.labels
        n = len(y)
        lines = [f"SyntheticScenes(split={self.split!r}, images={n}, "
                 f"image_size={self.image_size}, seed={self.seed}, "
                 f"max_objects={self.max_objects})",
                 f"  labels per image: mean {y.sum(1).mean():.2f}, "
                 f"min {y.sum(1).min()}, max {y.sum(1).max()}",
                 "  scenes: " + ", ".join(
                     f"{s} {np.mean(self.scenes == k):.2f}" for k, s in enumerate(SCENES)),
                 "  class frequencies:"]
        freq = y.mean(0)
        for c, name in enumerate(CLASSES):
            lines.append(f"    {name:<14s} {int(y[:, c].sum()):5d}  ({freq[c]:.3f})")
        p = self.conditional_probabilities()
        gap = p - p.T
        pairs = np.dstack(np.unravel_index(np.argsort(-gap, axis=None)[:top], gap.shape))[0]
        lines.append("  most asymmetric pairs P(j|i) vs P(i|j):")
        for i, j in pairs:
            lines.append(f"    P({CLASSES[j]} | {CLASSES[i]}) = {p[i, j]:.2f}   "
                         f"P({CLASSES[i]} | {CLASSES[j]}) = {p[j, i]:.2f}")
        return "\n".join(lines)

    def save_grid(self, path: Union[str, Path], n: int = 16, boxes: bool = True) -> Path:
        """Save the first ``n`` rendered images as a PNG grid (boxes outlined in white)."""
        n = max(1, min(int(n), len(self)))
        cols = int(math.ceil(math.sqrt(n)))
        rows = int(math.ceil(n / cols))
        S, pad = self.image_size, 2
        grid = Image.new("RGB", (cols * (S + pad) + pad, rows * (S + pad) + pad), (0, 0, 0))
        for k in range(n):
            img, bx, _ = self.render(k)
            if boxes:
                d = ImageDraw.Draw(img)
                for b in bx.tolist():
                    d.rectangle(b, outline=(255, 255, 255))
            grid.paste(img, (pad + (k % cols) * (S + pad), pad + (k // cols) * (S + pad)))
        path = Path(path)
        grid.save(path)
        return path

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, num_images={len(self)}, "
                f"image_size={self.image_size}, seed={self.seed}, "
                f"max_objects={self.max_objects}, cache={self.cache})")
