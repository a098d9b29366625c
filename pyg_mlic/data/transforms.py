r"""Image transforms that keep boxes consistent with the image.

Every transform is a callable ``(image: PIL.Image, boxes: Tensor[M, 4] | None) ->
(Tensor[3, H, W], Tensor[M, 4] | None)``; boxes are ``xyxy`` in pixels of the image
they accompany, before and after.

The papers' training protocols, and the transform of each:

- ML-GCN (Sec. 4.2), IA-GCN, GM-MLIC: a random crop resized to ``448 x 448`` and a random
  horizontal flip (:class:`RandomCropResizeTransform`);
- A-GCN (Sec. 4.1): resize to ``512 x 512``, a random ``448 x 448`` crop and a random flip
  (:class:`ResizeRandomCropTransform`);
- IML-GCN (and its ASL baseline): RandAugment on top (``randaugment=`` of either, with
  torchvision's operations, boxes kept consistent: :class:`BoxRandAugment`).

At test time every paper resizes to ``448 x 448`` (:class:`ResizeTransform`; each
training transform's :meth:`~RandomCropResizeTransform.eval_transform`).

Normalisation belongs to the backbone's weights: ``mean`` / ``std`` must come from
:func:`pyg_mlic.backbones.data_config` (TResNet: mean 0, std 1, i.e. inputs in
:math:`[0, 1]`; torchvision ResNets: the ImageNet statistics). The defaults here
(:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`) are those of torchvision's weights;
:func:`pyg_mlic.data.factory.build_splits` passes the backbone's own.
"""
from __future__ import annotations

import math
import random
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from PIL import Image, ImageDraw
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Boxes = Optional[torch.Tensor]

__all__ = ["ResizeTransform", "RandomCropResizeTransform", "ResizeRandomCropTransform",
           "BoxRandAugment", "build_transforms", "IMAGENET_MEAN", "IMAGENET_STD",
           "GEOMETRIC_OPS", "TRAIN_TRANSFORMS"]


def _to_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    t = TF.pil_to_tensor(img.convert("RGB")).float().div_(255.0)
    return TF.normalize(t, mean, std)


def _clip_boxes(boxes: torch.Tensor, w: float, h: float) -> torch.Tensor:
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return boxes


def _has_boxes(boxes: Boxes) -> bool:
    return boxes is not None and len(boxes) > 0


class ResizeTransform:
    """Test-time transform: resize to ``size x size`` (or keep the aspect ratio with
    the shorter side at ``size`` when ``keep_aspect=True``), to tensor, normalise.

    Args:
        size (int): output side. (default: :obj:`448`)
        keep_aspect (bool): resize the shorter side only. (default: :obj:`False`)
        mean, std: normalisation of the :math:`[0, 1]` image, per channel: the backbone's
            (:func:`pyg_mlic.backbones.data_config`). (default: ImageNet statistics)
    """

    #: deterministic: the same output for the same image (no augmentation)
    random = False

    def __init__(self, size: int = 448, keep_aspect: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.size, self.keep_aspect = int(size), keep_aspect
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, img: Image.Image, boxes: Boxes = None) -> Tuple[torch.Tensor, Boxes]:
        w, h = img.size
        if self.keep_aspect:
            s = self.size / min(w, h)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
        else:
            nw = nh = self.size
        img = img.resize((nw, nh), Image.BILINEAR)
        if _has_boxes(boxes):
            scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=boxes.dtype)
            boxes = boxes * scale
        return _to_tensor(img, self.mean, self.std), boxes

    def eval_transform(self) -> "ResizeTransform":
        """Itself (already deterministic)."""
        return self

    def __repr__(self) -> str:
        return (f"ResizeTransform(size={self.size}, keep_aspect={self.keep_aspect}, "
                f"mean={self.mean}, std={self.std})")


# ------------------------------------------------------------------------ RandAugment
#: RandAugment operations that move pixels (and so boxes); the other nine (Identity,
#: Brightness, Color, Contrast, Sharpness, Posterize, Solarize, AutoContrast, Equalize)
#: change values only and leave boxes as they are
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _op_points(op: str, magnitude: float, pts: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """Where torchvision's ``_apply_op(img, op, magnitude)`` moves the pixel positions
    ``pts`` ``[N, 2]`` (x, y) of a ``w x h`` PIL image (checked against the pixels in
    ``tests/data/test_transforms.py``)."""
    x, y = pts[:, 0], pts[:, 1]
    if op == "ShearX":                        # affine about (0, 0): x' = x - m y
        return torch.stack([x - magnitude * y, y], 1)
    if op == "ShearY":                        # y' = y - m x
        return torch.stack([x, y - magnitude * x], 1)
    if op == "TranslateX":
        return torch.stack([x + int(magnitude), y], 1)
    if op == "TranslateY":
        return torch.stack([x, y + int(magnitude)], 1)
    if op == "Rotate":                        # counter-clockwise about the image centre
        a = math.radians(magnitude)
        cx, cy = w * 0.5, h * 0.5
        dx, dy = x - cx, y - cy
        return torch.stack([cx + dx * math.cos(a) + dy * math.sin(a),
                            cy - dx * math.sin(a) + dy * math.cos(a)], 1)
    return pts


def _op_boxes(op: str, magnitude: float, boxes: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """The boxes after geometric op ``op``: the axis-aligned box enclosing the four moved
    corners (exact for translations, the tight box of the sheared / rotated rectangle
    otherwise), clipped to the image."""
    x0, y0, x1, y1 = boxes.unbind(1)
    corners = torch.stack([torch.stack([x0, y0], 1), torch.stack([x1, y0], 1),
                           torch.stack([x0, y1], 1), torch.stack([x1, y1], 1)], 1)  # [M,4,2]
    moved = _op_points(op, magnitude, corners.reshape(-1, 2).double(), w, h)
    moved = moved.reshape(-1, 4, 2)
    out = torch.cat([moved.min(1).values, moved.max(1).values], 1).to(boxes.dtype)
    return _clip_boxes(out, w, h)


class BoxRandAugment:
    r"""RandAugment (Cubuk et al., 2020) with boxes kept consistent: torchvision's
    :class:`~torchvision.transforms.RandAugment` operation space and operations, on a PIL
    image with its ``xyxy`` boxes.

    Each call applies ``num_ops`` operations drawn uniformly (with replacement) from the
    14 of torchvision (``Identity``, ``ShearX/Y``, ``TranslateX/Y``, ``Rotate``,
    ``Brightness``, ``Color``, ``Contrast``, ``Sharpness``, ``Posterize``, ``Solarize``,
    ``AutoContrast``, ``Equalize``) at magnitude bin ``magnitude`` of
    ``num_magnitude_bins`` (signed ones with a random sign), exactly as
    ``torchvision.transforms.RandAugment`` does, with the operations applied by
    torchvision's own ``_apply_op``. Only the random draws come from ``rng`` (Python's
    :mod:`random`, as the other transforms here) instead of torch's generator.

    Boxes: the nine photometric operations leave them as they are; the five geometric
    ones (:data:`GEOMETRIC_OPS`) move them: translations exactly, shears and rotations to
    the axis-aligned box enclosing the moved corners (the usual convention, e.g.
    albumentations'; a rotated object's own extent is not known from its box), clipped to
    the image. ``geometric=False`` drops the five from the draw (photometric
    RandAugment: boxes never move).

    Args:
        num_ops (int): operations per image. (default: :obj:`2`, torchvision's)
        magnitude (int): magnitude bin. (default: :obj:`9`, torchvision's)
        num_magnitude_bins (int): (default: :obj:`31`, torchvision's)
        geometric (bool): include the geometric operations. (default: :obj:`True`)
        interpolation (str): resampling of the geometric operations.
            (default: :obj:`"nearest"`, torchvision's)
        fill (sequence of int, optional): fill of the pixels geometric operations uncover.
            (default: black, torchvision's)
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31,
                 geometric: bool = True, interpolation: str = "nearest",
                 fill: Optional[Sequence[int]] = None) -> None:
        from torchvision.transforms import InterpolationMode, RandAugment

        if int(num_ops) < 0:
            raise ValueError(f"BoxRandAugment: num_ops must be >= 0, got {num_ops}")
        if not 0 <= int(magnitude) < int(num_magnitude_bins):
            raise ValueError(f"BoxRandAugment: magnitude must be in [0, {num_magnitude_bins})"
                             f", got {magnitude}")
        self.num_ops, self.magnitude = int(num_ops), int(magnitude)
        self.num_magnitude_bins, self.geometric = int(num_magnitude_bins), bool(geometric)
        self.interpolation = InterpolationMode(interpolation)
        self.fill = list(fill) if fill is not None else None
        self._ra = RandAugment(self.num_ops, self.magnitude, self.num_magnitude_bins,
                               self.interpolation, self.fill)

    def op_space(self, width: int, height: int) -> Dict[str, Tuple[torch.Tensor, bool]]:
        """``{op name: (magnitudes per bin, signed)}`` for a ``width x height`` image:
        torchvision's, without :data:`GEOMETRIC_OPS` when ``geometric=False``."""
        space = self._ra._augmentation_space(self.num_magnitude_bins, (height, width))
        if not self.geometric:
            space = {k: v for k, v in space.items() if k not in GEOMETRIC_OPS}
        return space

    def sample(self, width: int, height: int, rng=None) -> list:
        """The ``num_ops`` ``(op name, magnitude)`` pairs of one call."""
        rng = rng if rng is not None else random
        space = self.op_space(width, height)
        names = list(space)
        ops = []
        for _ in range(self.num_ops):
            name = names[rng.randrange(len(names))]
            magnitudes, signed = space[name]
            mag = float(magnitudes[self.magnitude].item()) if magnitudes.ndim > 0 else 0.0
            if signed and rng.random() < 0.5:
                mag = -mag
            ops.append((name, mag))
        return ops

    def apply(self, img: Image.Image, boxes: Boxes, ops) -> Tuple[Image.Image, Boxes]:
        """Apply the ``(op name, magnitude)`` pairs ``ops`` to ``img`` and its boxes."""
        from torchvision.transforms.autoaugment import _apply_op

        for name, mag in ops:
            img = _apply_op(img, name, mag, interpolation=self.interpolation, fill=self.fill)
            if name in GEOMETRIC_OPS and _has_boxes(boxes):
                boxes = _op_boxes(name, mag, boxes, *img.size)
        return img, boxes

    def __call__(self, img: Image.Image, boxes: Boxes = None, rng=None
                 ) -> Tuple[Image.Image, Boxes]:
        return self.apply(img, boxes, self.sample(*img.size, rng=rng))

    def __repr__(self) -> str:
        return (f"BoxRandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"num_magnitude_bins={self.num_magnitude_bins}, geometric={self.geometric})")


RandAugmentArg = Union[None, bool, Mapping[str, Any], BoxRandAugment]


def _randaugment(arg: RandAugmentArg) -> Optional[BoxRandAugment]:
    if arg is None or arg is False:
        return None
    if arg is True:
        return BoxRandAugment()
    if isinstance(arg, BoxRandAugment):
        return arg
    if isinstance(arg, Mapping):
        return BoxRandAugment(**dict(arg))
    raise TypeError(f"randaugment must be None, a bool, a dict of BoxRandAugment options or "
                    f"a BoxRandAugment, got {type(arg).__name__}")


# ------------------------------------------------------------------------ training
class RandomCropResizeTransform:
    """Training transform: random crop (area fraction in ``scale``, aspect ratio in
    ``ratio``), resize to ``size x size``, random horizontal flip with ``flip_p``; then,
    when asked, Cutout and RandAugment (the ASL / IML-GCN recipe), to tensor, normalise.

    Boxes are shifted, clipped to the crop and scaled; boxes left with no area keep
    their row (degenerate, zero area) so that box indices stay aligned with
    ``box_labels``. Cutout leaves boxes as they are (it occludes, it does not move);
    RandAugment moves them with its geometric operations (see :class:`BoxRandAugment`).

    Order of one call: crop + resize, flip, Cutout, RandAugment, normalise. RandAugment
    runs on the ``size x size`` network input, as in ASL's code (resize, Cutout,
    RandAugment, to tensor), so its translations are fractions of the network input.

    Args:
        size (int): output side. (default: :obj:`448`)
        scale (tuple): range of the crop's area fraction. (default: :obj:`(0.5, 1.0)`)
        ratio (tuple): range of the crop's aspect ratio. (default: :obj:`(3/4, 4/3)`)
        flip_p (float): probability of a horizontal flip. (default: :obj:`0.5`)
        mean, std: normalisation: the backbone's (:func:`pyg_mlic.backbones.data_config`).
            (default: ImageNet statistics)
        generator (random.Random, optional): source of randomness (for determinism).
        randaugment: :obj:`None` / :obj:`False` (none), :obj:`True` (torchvision's
            defaults: 2 operations at magnitude 9), a dict of :class:`BoxRandAugment`
            options, or a :class:`BoxRandAugment`. (default: :obj:`None`)
        cutout (float, optional): ASL's ``CutoutPIL``: a rectangle of ``cutout`` times each
            side, centred at a uniform position (clipped to the image), filled with a random
            colour. (default: :obj:`None`, none)
    """

    #: a new random augmentation at every call
    random = True

    def __init__(self, size: int = 448, scale: Tuple[float, float] = (0.5, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 generator: Optional[random.Random] = None,
                 randaugment: RandAugmentArg = None, cutout: Optional[float] = None):
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        if not 0.0 <= float(flip_p) <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        if cutout is not None and not 0.0 < float(cutout) <= 1.0:
            raise ValueError(f"cutout must be a fraction of the side in (0, 1], got {cutout}")
        self.size, self.scale, self.ratio, self.flip_p = int(size), scale, ratio, float(flip_p)
        self.mean, self.std = tuple(mean), tuple(std)
        self.generator = generator  # None: the global `random` module (seeded per worker)
        self.randaugment = _randaugment(randaugment)
        self.cutout = float(cutout) if cutout is not None else None

    @property
    def rng(self):
        return self.generator if self.generator is not None else random

    def _crop_box(self, w: int, h: int) -> Tuple[int, int, int, int]:
        area = w * h
        for _ in range(10):
            a = area * self.rng.uniform(*self.scale)
            r = math.exp(self.rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw, ch = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
            if 0 < cw <= w and 0 < ch <= h:
                return self.rng.randint(0, w - cw), self.rng.randint(0, h - ch), cw, ch
        return 0, 0, w, h

    def _crop_resize(self, img: Image.Image, boxes: Boxes) -> Tuple[Image.Image, Boxes]:
        """The geometric part before the flip: ``img`` to ``size x size``, boxes along."""
        w, h = img.size
        x0, y0, cw, ch = self._crop_box(w, h)
        img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((self.size, self.size), Image.BILINEAR)
        if _has_boxes(boxes):
            b = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
            b = _clip_boxes(b, cw, ch)
            boxes = b * torch.tensor([self.size / cw, self.size / ch] * 2, dtype=boxes.dtype)
        return img, boxes

    def _cutout(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        cw, ch = int(self.cutout * w + 0.5), int(self.cutout * h + 0.5)
        xc, yc = self.rng.randrange(w), self.rng.randrange(h)
        x0, x1 = max(0, xc - cw // 2), min(w, xc + cw // 2)
        y0, y1 = max(0, yc - ch // 2), min(h, yc + ch // 2)
        fill = tuple(self.rng.randint(0, 255) for _ in range(3))
        img = img.convert("RGB")  # a copy: the dataset's image is not drawn on
        ImageDraw.Draw(img).rectangle([x0, y0, x1, y1], fill=fill)
        return img

    def __call__(self, img: Image.Image, boxes: Boxes = None) -> Tuple[torch.Tensor, Boxes]:
        img, boxes = self._crop_resize(img, boxes)
        s = self.size
        if self.rng.random() < self.flip_p:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            if _has_boxes(boxes):
                boxes = torch.stack([s - boxes[:, 2], boxes[:, 1], s - boxes[:, 0],
                                     boxes[:, 3]], 1)
        if _has_boxes(boxes):
            boxes = _clip_boxes(boxes, s, s)  # float rounding can overshoot
        if self.cutout is not None:
            img = self._cutout(img)
        if self.randaugment is not None:
            img, boxes = self.randaugment(img, boxes, rng=self.rng)
        return _to_tensor(img, self.mean, self.std), boxes

    def eval_transform(self) -> ResizeTransform:
        """The matching test-time transform: resize to ``size x size``, same normalisation
        (what every paper evaluates with)."""
        return ResizeTransform(self.size, mean=self.mean, std=self.std)

    def _extra_repr(self) -> str:
        out = f"flip_p={self.flip_p}, mean={self.mean}, std={self.std}"
        if self.cutout is not None:
            out += f", cutout={self.cutout}"
        if self.randaugment is not None:
            out += f", randaugment={self.randaugment!r}"
        return out

    def __repr__(self) -> str:
        return (f"RandomCropResizeTransform(size={self.size}, scale={self.scale}, "
                f"{self._extra_repr()})")


class ResizeRandomCropTransform(RandomCropResizeTransform):
    """A-GCN's training transform (Sec. 4.1): resize to ``resize x resize``, crop a
    ``size x size`` window at a uniformly random integer offset, random horizontal flip
    (then Cutout / RandAugment when asked, as :class:`RandomCropResizeTransform`).

    The paper: "we resize images to scale 512 x 512 on MS-COCO and randomly crop regions
    of 448 x 448 with random flipping; for test, we resize images to 448 x 448"
    (:meth:`eval_transform`). Every crop covers :math:`(448/512)^2`, about 77 %, of the
    image at one fixed scale, unlike the random-resized crop of the other papers (area 50-100 %,
    aspect 3/4-4/3, rescaled). ``resize == size`` is a plain resize (ASL's training
    geometry).

    Boxes are scaled by ``resize / (W, H)``, shifted by the crop offset and clipped to
    the window (rows kept, as :class:`RandomCropResizeTransform` does).

    Args:
        size (int): crop side = output side. (default: :obj:`448`)
        resize (int): side of the square resize before the crop, ``>= size``.
            (default: :obj:`512`)
        flip_p, mean, std, generator, randaugment, cutout: as
            :class:`RandomCropResizeTransform`.
    """

    def __init__(self, size: int = 448, resize: int = 512, flip_p: float = 0.5,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 generator: Optional[random.Random] = None,
                 randaugment: RandAugmentArg = None, cutout: Optional[float] = None):
        super().__init__(size, scale=(1.0, 1.0), flip_p=flip_p, mean=mean, std=std,
                         generator=generator, randaugment=randaugment, cutout=cutout)
        if int(resize) < int(size):
            raise ValueError(f"ResizeRandomCropTransform: resize ({resize}) must be >= the "
                             f"crop size ({size})")
        self.resize = int(resize)

    def _crop_resize(self, img: Image.Image, boxes: Boxes) -> Tuple[Image.Image, Boxes]:
        w, h = img.size
        r, s = self.resize, self.size
        img = img.resize((r, r), Image.BILINEAR)
        ox, oy = self.rng.randint(0, r - s), self.rng.randint(0, r - s)
        img = img.crop((ox, oy, ox + s, oy + s))
        if _has_boxes(boxes):
            b = boxes * torch.tensor([r / w, r / h, r / w, r / h], dtype=boxes.dtype)
            b = b - torch.tensor([ox, oy, ox, oy], dtype=boxes.dtype)
            boxes = _clip_boxes(b, s, s)
        return img, boxes

    def __repr__(self) -> str:
        return (f"ResizeRandomCropTransform(size={self.size}, resize={self.resize}, "
                f"{self._extra_repr()})")


#: the training transforms by name (``train`` of a data config, see
#: :func:`pyg_mlic.data.factory.resolve_data_config`)
TRAIN_TRANSFORMS = {"random_resized_crop": RandomCropResizeTransform,
                    "resize_crop": ResizeRandomCropTransform}


def build_transforms(train: bool, size: int = 448, kind: str = "random_resized_crop",
                     **kwargs):
    """The papers' transform for the training (``train=True``) or test split.

    Args:
        train (bool): the training transform (``kind``) or the test one
            (:class:`ResizeTransform`).
        size (int): network input side. (default: :obj:`448`)
        kind (str): training transform, a key of :data:`TRAIN_TRANSFORMS`:
            ``"random_resized_crop"`` (ML-GCN, IA-GCN, GM-MLIC) or ``"resize_crop"``
            (A-GCN). (default: :obj:`"random_resized_crop"`)
        **kwargs: the transform's options (``mean``, ``std``, ``scale``, ``resize``,
            ``randaugment`` ...).
    """
    if not train:
        return ResizeTransform(size, **kwargs)
    if kind not in TRAIN_TRANSFORMS:
        raise ValueError(f"unknown training transform {kind!r}; valid: {list(TRAIN_TRANSFORMS)}")
    return TRAIN_TRANSFORMS[kind](size, **kwargs)
