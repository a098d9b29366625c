"""Regions / RegionFeatures / image conversion / registry (no detector forward)."""
import numpy as np
import pytest
import torch
from PIL import Image

from pyg_mlic.data.base import collate
from pyg_mlic.detection import (
    ROI_KEYS,
    RegionFeatures,
    Regions,
    build_region_extractor,
    detectron2_available,
    list_region_backends,
    resolve_backend,
    to_float_image,
)


def _regions(m, d=3, size=(20, 30), seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(m, 2, generator=g) * torch.tensor([15.0, 10.0])
    wh = torch.rand(m, 2, generator=g) * 10
    boxes = torch.cat([xy, xy + wh], 1)
    return Regions(boxes, torch.randn(m, d, generator=g), torch.rand(m, generator=g),
                   torch.arange(m), size)


def test_regions_validation():
    with pytest.raises(ValueError, match="boxes must be"):
        Regions(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.zeros(2), (5, 5))
    with pytest.raises(ValueError, match="features must be"):
        Regions(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(2), torch.zeros(2), (5, 5))
    with pytest.raises(ValueError, match="scores"):
        Regions(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(3), torch.zeros(2), (5, 5))
    with pytest.raises(ValueError, match="image_size"):
        Regions(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), (0, 5))
    r = Regions(torch.tensor([[0.0, 0.0, 31.0, 5.0]]), torch.zeros(1, 2), torch.ones(1),
                torch.zeros(1), (20, 30))
    with pytest.raises(ValueError, match="not an xyxy box inside the 30x20"):
        r.check_inside("unit")
    assert r.clip_().boxes.tolist() == [[0.0, 0.0, 30.0, 5.0]]


def test_topk_is_stable_descending():
    r = Regions(torch.arange(16.0).view(4, 4).cumsum(1), torch.eye(4), torch.tensor(
        [0.5, 0.9, 0.5, 0.1]), torch.tensor([10, 11, 12, 13]), (100, 100))
    t = r.topk(3)
    assert t.labels.tolist() == [11, 10, 12]          # ties keep their order
    assert torch.equal(t.scores, torch.tensor([0.9, 0.5, 0.5]))
    assert torch.equal(t.features, torch.eye(4)[[1, 0, 2]])


def test_padding_and_zero_regions():
    rs = [_regions(5), Regions.empty(3, (40, 50)), _regions(2, seed=1)]
    rf = RegionFeatures.from_regions(rs, max_instances=4)
    assert rf.features.shape == (3, 4, 3) and rf.mask.dtype == torch.bool
    assert rf.num_instances.tolist() == [4, 0, 2]      # 5 truncated to the top 4
    # the image without regions: zeros everywhere, mask all False, labels -1
    assert not rf.mask[1].any()
    assert rf.features[1].abs().sum() == 0 and rf.boxes[1].abs().sum() == 0
    assert (rf.labels[1] == -1).all() and rf.image_sizes[1].tolist() == [40, 50]
    # padding rows of a partial image are zero too
    assert rf.features[2, 2:].abs().sum() == 0 and (rf.labels[2, 2:] == -1).all()
    # the kept rows are the top-4 by score, in descending order
    top = rs[0].topk(4)
    assert torch.equal(rf.features[0], top.features) and torch.equal(rf.scores[0], top.scores)
    assert (rf.scores[0][:-1] >= rf.scores[0][1:]).all()
    back = rf.unbind()
    assert [r.num_instances for r in back] == [4, 0, 2]
    assert torch.equal(back[2].boxes, rs[2].topk(4).boxes)


def test_normalized_boxes_eq1():
    r = Regions(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), torch.zeros(1, 1), torch.ones(1),
                torch.zeros(1), (200, 100))        # H = 200, W = 100
    assert torch.allclose(r.normalized_boxes(), torch.tensor([[0.1, 0.1, 0.3, 0.2]]))
    rf = RegionFeatures.from_regions([r, Regions.empty(1, (5, 5))], 2)
    nb = rf.normalized_boxes()
    assert torch.allclose(nb[0, 0], torch.tensor([0.1, 0.1, 0.3, 0.2]))
    assert nb[0, 1].abs().sum() == 0 and nb[1].abs().sum() == 0


def test_all_empty_needs_feature_dim():
    with pytest.raises(ValueError, match="feature_dim"):
        RegionFeatures.from_regions([], 4)
    rf = RegionFeatures.from_regions([Regions.empty(7, (3, 3))], 4)
    assert rf.features.shape == (1, 4, 7) and not rf.mask.any()
    with pytest.raises(ValueError, match="feature dimension"):
        RegionFeatures.from_regions([_regions(2, d=3), _regions(2, d=4)], 4, feature_dim=3)


def test_collate_stacks_roi_keys():
    rf = RegionFeatures.from_regions([_regions(3), Regions.empty(3, (9, 9))], 5)
    samples = [{"roi_features": rf.features[i], "roi_boxes": rf.boxes[i],
                "roi_mask": rf.mask[i], "roi_scores": rf.scores[i], "roi_labels": rf.labels[i],
                "roi_image_size": rf.image_sizes[i], "index": i} for i in range(2)]
    batch = collate(samples)
    back = RegionFeatures.from_batch(batch)
    for k in ("features", "boxes", "mask", "scores", "labels", "image_sizes"):
        assert torch.equal(getattr(back, k), getattr(rf, k))
    with pytest.raises(KeyError, match="RegionDataset"):
        RegionFeatures.from_batch({"image": torch.zeros(1)})
    assert set(ROI_KEYS) <= set(batch)


def test_to_float_image_inputs():
    arr = (np.arange(2 * 3 * 3) % 256).astype(np.uint8).reshape(2, 3, 3)     # HWC
    pil = Image.fromarray(arr)
    a = to_float_image(pil)
    assert a.shape == (3, 2, 3) and a.dtype == torch.float32
    assert torch.equal(a, to_float_image(torch.from_numpy(arr).permute(2, 0, 1)))
    assert torch.equal(a, to_float_image(arr))
    assert torch.equal(a, to_float_image(a))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_float_image(torch.randn(3, 4, 4) * 3)        # an ImageNet-normalised tensor
    with pytest.raises(ValueError, match="RGB image"):
        to_float_image(torch.zeros(1, 4, 4))
    with pytest.raises(TypeError):
        to_float_image("image.jpg")


def test_registry_and_auto_choice(capsys):
    assert {"torchvision", "detectron2", "precomputed", "groundtruth"} <= \
        set(list_region_backends())
    with pytest.raises(ValueError, match="valid"):
        build_region_extractor("yolo")
    chosen = resolve_backend("auto")
    assert chosen == ("detectron2" if detectron2_available() else "torchvision")
    assert f"backend 'auto' -> {chosen!r}" in capsys.readouterr().err
    resolve_backend("auto", verbose=False)
    assert capsys.readouterr().err == ""
    assert resolve_backend("torchvision") == "torchvision"


def test_misspelt_or_missing_backend_arguments_are_named():
    """``--region-opt`` typos and missing required arguments are OptionErrors naming the
    valid arguments, raised before any detector is built (no TypeError)."""
    from pyg_mlic.errors import OptionError

    with pytest.raises(OptionError, match=r"region backend 'torchvision' got an unknown "
                                          r"argument 'wieghts'; did you mean 'weights'\?"):
        build_region_extractor("torchvision", wieghts="x")
    with pytest.raises(OptionError, match=r"region backend 'precomputed' needs the "
                                          r"argument\(s\) 'path' \(--region-opt path=\.\.\.\)"):
        build_region_extractor("precomputed")


def test_model_region_recipe_fills_options_the_backend_takes():
    """GM-MLIC's recipe asks for the detector's detections (the paper's setting); it only
    fills options the backend has and never overrides the user's."""
    from pyg_mlic.detection import model_region_options
    from pyg_mlic.models.gm_mlic import GMMLIC
    from pyg_mlic.models.ia_gcn import IAGCN

    assert model_region_options(GMMLIC, "torchvision") == {"mode": "detections"}
    assert model_region_options(GMMLIC, "detectron2", {"max_instances": 35}) == \
        {"mode": "detections", "max_instances": 35}
    assert model_region_options(GMMLIC, "torchvision", {"mode": "rpn"}) == {"mode": "rpn"}
    assert model_region_options(GMMLIC, "groundtruth", {"image_size": 48}) == \
        {"image_size": 48}                                   # no `mode` there
    assert model_region_options(GMMLIC, "precomputed") == {}
    assert model_region_options(IAGCN, "torchvision") == {}     # RPN proposals (IA-GCN)
    assert model_region_options(None, "torchvision", {"seed": 1}) == {"seed": 1}
    with pytest.raises(TypeError, match="get_model_class"):  # the layer below the models
        model_region_options("gm_mlic", "torchvision")
    ex = build_region_extractor("groundtruth", model=GMMLIC, backbone="small_cnn",
                                image_size=48)
    assert ex.backend == "groundtruth"


@pytest.mark.heavy
def test_build_with_model_uses_detections():
    from pyg_mlic.models.gm_mlic import GMMLIC

    ex = build_region_extractor("torchvision", model=GMMLIC, min_size=256, max_size=320)
    assert ex.mode == "detections" and ex.config()["mode"] == "detections"
    assert build_region_extractor("torchvision", min_size=256, max_size=320).mode == "rpn"
