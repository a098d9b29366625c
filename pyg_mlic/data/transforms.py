"""Image transforms that keep boxes consistent with the image.

Every transform is a callable ``(image: PIL.Image, boxes: Tensor[M, 4] | None) ->
(Tensor[3, H, W], Tensor[M, 4] | None)``; boxes are ``xyxy`` in pixels of the image
they accompany, before and after.

The papers' protocol (ML-GCN Sec. 4.2, A-GCN Sec. 4.1): at training time the image
is randomly cropped and resized to ``448 x 448`` with random horizontal flips; at
test time it is resized to ``448 x 448``.
"""
from __future__ import annotations

import math
import random
from typing import Optional, Sequence, Tuple

import torch
from PIL import Image
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Boxes = Optional[torch.Tensor]


def _to_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    t = TF.pil_to_tensor(img.convert("RGB")).float().div_(255.0)
    return TF.normalize(t, mean, std)


def _clip_boxes(boxes: torch.Tensor, w: int, h: int) -> torch.Tensor:
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return boxes


class ResizeTransform:
    """Test-time transform: resize to ``size x size`` (or keep the aspect ratio with
    the shorter side at ``size`` when ``keep_aspect=True``), to tensor, normalise.

    Args:
        size (int): output side. (default: :obj:`448`)
        keep_aspect (bool): resize the shorter side only. (default: :obj:`False`)
        mean, std: normalisation. (default: ImageNet statistics)
    """

    def __init__(self, size: int = 448, keep_aspect: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.size, self.keep_aspect, self.mean, self.std = int(size), keep_aspect, mean, std

    def __call__(self, img: Image.Image, boxes: Boxes = None) -> Tuple[torch.Tensor, Boxes]:
        w, h = img.size
        if self.keep_aspect:
            s = self.size / min(w, h)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
        else:
            nw = nh = self.size
        img = img.resize((nw, nh), Image.BILINEAR)
        if boxes is not None and len(boxes):
            scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=boxes.dtype)
            boxes = boxes * scale
        return _to_tensor(img, self.mean, self.std), boxes

    def __repr__(self) -> str:
        return f"ResizeTransform(size={self.size}, keep_aspect={self.keep_aspect})"


class RandomCropResizeTransform:
    """Training transform: random crop (area fraction in ``scale``, aspect ratio in
    ``ratio``), resize to ``size x size``, random horizontal flip with ``flip_p``.

    Boxes are shifted, clipped to the crop and scaled; boxes left with no area keep
    their row (degenerate, zero area) so that box indices stay aligned with
    ``box_labels``.

    Args:
        size (int): output side. (default: :obj:`448`)
        scale (tuple): range of the crop's area fraction. (default: :obj:`(0.5, 1.0)`)
        ratio (tuple): range of the crop's aspect ratio. (default: :obj:`(3/4, 4/3)`)
        flip_p (float): probability of a horizontal flip. (default: :obj:`0.5`)
        generator (random.Random, optional): source of randomness (for determinism).
    """

    def __init__(self, size: int = 448, scale: Tuple[float, float] = (0.5, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 generator: Optional[random.Random] = None):
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        self.size, self.scale, self.ratio, self.flip_p = int(size), scale, ratio, flip_p
        self.mean, self.std = mean, std
        self.generator = generator  # None: the global `random` module (seeded per worker)

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

    def __call__(self, img: Image.Image, boxes: Boxes = None) -> Tuple[torch.Tensor, Boxes]:
        w, h = img.size
        x0, y0, cw, ch = self._crop_box(w, h)
        img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((self.size, self.size), Image.BILINEAR)
        flip = self.rng.random() < self.flip_p
        if flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if boxes is not None and len(boxes):
            b = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
            b = _clip_boxes(b, cw, ch)
            b = b * torch.tensor([self.size / cw, self.size / ch] * 2, dtype=boxes.dtype)
            if flip:
                b = torch.stack([self.size - b[:, 2], b[:, 1], self.size - b[:, 0], b[:, 3]], 1)
            boxes = _clip_boxes(b, self.size, self.size)  # float rounding can overshoot
        return _to_tensor(img, self.mean, self.std), boxes

    def __repr__(self) -> str:
        return (f"RandomCropResizeTransform(size={self.size}, scale={self.scale}, "
                f"flip_p={self.flip_p})")


def build_transforms(train: bool, size: int = 448, **kwargs):
    """The papers' transform for the training (``train=True``) or test split."""
    return RandomCropResizeTransform(size, **kwargs) if train else ResizeTransform(size, **kwargs)
