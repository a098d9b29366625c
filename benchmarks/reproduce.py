"""Reproduce the papers' tables with each paper's own settings, printed beside the
paper's numbers: ML-GCN, A-GCN, IA-GCN, IML-GCN, GM-MLIC and the two transformer heads
ML-Decoder and Query2Label on MS-COCO 2014, PASCAL VOC 2007 or NUS-WIDE.

Every setting a run uses comes from one table, :data:`PAPER_SETTINGS` ``[method][dataset]``,
each value with the paper section it is taken from (or ``"not in the paper: ..."`` with
what we chose instead). Every model is trained through :func:`pyg_mlic.engine.fit` with
those settings as explicit training options (the papers' backbones, 448 px inputs, SGD /
Adam, learning rates, schedules, epochs), label graphs come from the training split, the
region methods read their ROIs from a region backend (:class:`pyg_mlic.detection.
RegionDataset`, the paper's detector settings), and the last epoch is evaluated on the
test split (no selection on it).

ML-Decoder's and Query2Label's paper texts were not at hand: their settings and table rows
cite the authors' repositories (Alibaba-MIIL/ML_Decoder, SlongLiu/query2labels: file and
line or table, at the commits read), whose training scripts reproduce the papers; what
that code does and the engine does not (ML-Decoder's decay-free biases, both codes'
choice of the best val2014 epoch) is printed as a deviation.

The output holds, per method:

* the paper settings used, each with its source;
* the paper's table rows (read from the paper's tables, cited) beside the measured ones
  (mAP, CP, CR, CF1, OP, OR, OF1 and top-3 as the paper gives them; VOC: AP per class);
* every difference from the paper's protocol (``deviation: ...``): random backbone or
  detector initialisation when no local weights are given, fewer epochs, smaller images,
  another backbone or detector, a training subset, augmentation the library lacks ...;
* the metric rules of the comparison (threshold, top-3 rule, mAP over classes);
* for IA-GCN and GM-MLIC on COCO, the *detector leakage* warning: torchvision's and
  detectron2's COCO detectors were trained on COCO train2017, which holds about 35.5k of
  the 40.5k val2014 test images.

Usage on a GPU machine with the datasets and local weights (nothing is downloaded)::

    python benchmarks/reproduce.py --method ml_gcn --dataset coco --root /data/coco2014 \\
        --backbone-weights ~/weights/resnet101-63fe2227.pth --device cuda --workers 8
    python benchmarks/reproduce.py --method gm_mlic --dataset voc2007 \\
        --root /data/VOCdevkit/VOC2007 --backbone-weights ~/weights/resnet101-63fe2227.pth \\
        --detector-weights ~/weights/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth --device cuda
    # a detector trained on COCO train2014 only: no leakage into val2014
    python benchmarks/reproduce.py --method ia_gcn --dataset coco --root /data/coco2014 \\
        --backbone-weights ~/weights/resnet101-63fe2227.pth \\
        --detector-weights ~/weights/frcnn_r50fpn_train2014.pth \\
        --detector-trained-on coco-train2014 --device cuda

``--rows`` picks table rows (``--rows all``: every row the script knows for the method;
default: the method's headline rows and the reference row its paper compares with).
``--method all`` runs every method whose paper has a table for the dataset. Shrinking a
run (``--epochs``, ``--image-size``, ``--backbone``, ``--num-train``, ``--num-test``,
``--batch-size``, ``--detector-size``, no ``--backbone-weights``) is allowed and every
such change is listed as a deviation.

Smoke run on the 8 real COCO images of the shared data (CPU, one epoch; numbers from
such a run mean nothing: random initialisation, 4 training images)::

    python benchmarks/reproduce.py --method all --dataset coco \\
        --root ../shared/data/images/coco8 --train-file instances_train.json \\
        --test-file instances_val.json --epochs 1 --image-size 64 --backbone small_cnn \\
        --batch-size 4 --detector-size 64 --no-checkpoint

The JSON (``--json FILE``) carries, in its top-level ``ratios`` block, each measured
row's mAP over the method's measured reference row (its first row; same run), with the
paper's ratio of the same rows in the entry's ``meaning``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from _common import data_dir, machine, sanitize_text, score_ratio, write_results

METHODS = ("ml_gcn", "a_gcn", "ia_gcn", "iml_gcn", "gm_mlic", "ml_decoder", "q2l")
DATASETS = ("coco", "voc2007", "nuswide")
#: methods that read ROIs from a region backend
REGION_METHODS = ("ia_gcn", "gm_mlic")
#: models of the rows that need ROIs
REGION_MODELS = ("ia_gcn", "gm_mlic")
PAPERS = {
    "ml_gcn": "ML-GCN (Chen et al., CVPR 2019)",
    "a_gcn": "A-GCN (Li et al., 'Learning Category Correlations for Multi-label Image "
             "Recognition with Graph Networks')",
    "ia_gcn": "IA-GCN (instance-aware GCN)",
    "iml_gcn": "IML-GCN (Singh et al., AAAI 2022 workshop)",
    "gm_mlic": "GM-MLIC (Wu et al., IJCAI 2021)",
    "ml_decoder": "ML-Decoder (Ridnik et al., 'ML-Decoder: Scalable and Versatile "
                  "Classification Head', arXiv 2111.12933)",
    "q2l": "Query2Label (Liu et al., 'Query2Label: A Simple Transformer Way to Multi-Label "
           "Classification', arXiv 2107.10834)",
}
DATASET_NAMES = {"coco": "MS-COCO 2014 (train2014 -> val2014)",
                 "voc2007": "PASCAL VOC 2007 (trainval -> test)",
                 "nuswide": "NUS-WIDE (train -> test)"}
NOT = "not in the paper: "
#: COCO: val2014 holds 40,504 images; val2017 (5,000 images) is a subset of it and
#: train2017 = train2014 + the rest of val2014, i.e. 35,504 val2014 images
VAL2014_IMAGES, VAL2014_IN_TRAIN2017 = 40504, 35504


class S(NamedTuple):
    """One paper setting: its value and where it comes from."""

    value: Any
    source: str


# ============================================================================ settings
def _ml_gcn() -> Dict[str, S]:
    s = "Sec. 4.2"
    return {
        "backbone": S("resnet101", f"{s}: ResNet-101 as the feature extraction backbone"),
        "backbone_init": S("imagenet", f"{s}: pre-trained on ImageNet"),
        "model.pool": S("max", "Sec. 3.3, Eq. 3: global max-pooling"),
        "image_size": S(448, f"{s}: random cropped and resized into 448 x 448"),
        "augment": S("crop_flip", f"{s}: random crop resized to 448 x 448, random "
                                  "horizontal flips"),
        "label_embeddings": S("glove300", f"{s}: 300-dim GloVe trained on Wikipedia, "
                                          "multi-word names averaged"),
        "model.tau": S(0.4, f"{s}: tau of Eq. 7 = 0.4"),
        "model.p": S(0.2, f"{s}: p of Eq. 8 = 0.2"),
        "model.negative_slope": S(0.2, f"{s}: LeakyReLU, negative slope 0.2"),
        "gcn": S("2 layers, 300 -> 1024 -> 2048 (= D)", f"{s}; the model's default hidden "
                 "width D/2 is 1024 for ResNet-101"),
        "optimizer": S("sgd", f"{s}: SGD"),
        "momentum": S(0.9, f"{s}: momentum 0.9"),
        "weight_decay": S(1e-4, f"{s}: weight decay 1e-4"),
        "lr": S(0.01, f"{s}: initial learning rate 0.01"),
        "backbone_lr": S(0.001, NOT + "the ML-GCN release trains the pre-trained CNN at "
                                      "0.1 x lr (--lrp 0.1)"),
        "lr_step": S(40, f"{s}: decays by a factor of 10 every 40 epochs"),
        "lr_gamma": S(0.1, f"{s}: factor of 10"),
        "epochs": S(100, f"{s}: 100 epochs in total"),
        "batch_size": S(32, NOT + "the minibatch A-GCN states while keeping ML-GCN's "
                                  "settings"),
    }


def _a_gcn() -> Dict[str, S]:
    s = "Sec. 'Implementations and evaluation metrics'"
    return {
        "backbone": S("resnet101", f"{s}: ResNet-101 on MS-COCO"),
        "backbone_init": S("imagenet", f"{s}: pre-trained on ImageNet"),
        "model.pool": S("max", NOT + "GMP of the ML-GCN pipeline A-GCN revisits "
                                     "(Sec. 'Preliminaries')"),
        "image_size": S(448, f"{s}: random 448 x 448 crops; test: resize to 448 x 448"),
        "augment": S("resize512_crop448_flip", f"{s}: resize to 512 x 512, random 448 x 448 "
                                               "crop, random flipping"),
        "label_embeddings": S("glove300", f"{s}: word embeddings as ML-GCN's (GloVe)"),
        "model.alpha": S(1.0, "Sec. 'Sparse correlation constraint': alpha default 1.0"),
        "gcn": S("as ML-GCN: 2 layers, 1024 -> 2048", f"{s}: GCN hyper-parameters kept "
                 "consistent with ML-GCN"),
        "optimizer": S("sgd", f"{s}: SGD"),
        "momentum": S(0.9, f"{s}: momentum 0.9"),
        "weight_decay": S(1e-4, f"{s}: weight decay 1e-4"),
        "batch_size": S(32, f"{s}: minibatch size 32"),
        "lr": S(0.01, f"{s}: initial learning rate 1e-2"),
        "backbone_lr": S(0.001, NOT + "0.1 x lr as in the ML-GCN release A-GCN follows"),
        "lr_step": S(30, f"{s}: divide lr by 10 after every 30 epochs"),
        "lr_gamma": S(0.1, f"{s}: divide by 10"),
        "epochs": S(65, f"{s}: stop training after 65 epochs"),
    }


def _ia_gcn() -> Dict[str, S]:
    s = "Sec. 4.3"
    return {
        "backbone": S("resnet101", f"{s} 'Pre-processing': ResNet-101"),
        "backbone_init": S("imagenet", f"{s} 'Pre-processing': pre-trained on ImageNet"),
        "model.pool": S("max", NOT + "ML-GCN's GMP (the paper's Base is ML-GCN)"),
        "image_size": S(448, f"{s} 'Pre-processing': randomly crop and resize into 448 x 448"),
        "augment": S("crop", f"{s} 'Pre-processing': random crop resized to 448 x 448 (flips "
                             "not mentioned)"),
        "label_embeddings": S("glove300", f"{s} 'Pre-processing': 300-d GloVe, multi-word "
                                          "names averaged"),
        "model.gcn_hidden": S([512, 1024], f"{s} 'IA-GCN Details': label GCN of 3 layers, "
                                           "512, 1024, 2048"),
        "model.region_hidden": S([256, 512, 1024, 2048], f"{s} 'IA-GCN Details': ROI GCN of "
                                                         "4 layers 256 ... 2048 + FC to C"),
        "model.negative_slope": S(0.0, f"{s} 'IA-GCN Details': all activations ReLU"),
        "model.max_instances": S(40, f"{s} 'IA-GCN Details': N = 40 ROIs"),
        "model.fusion_weight": S(0.8, f"{s} 'IA-GCN Details': lambda of Eq. 11 = 0.8"),
        "model.kl_weight": S(1.0, "Sec. 3.5, Eq. 12: L = L_ML + L_KL"),
        "model.tau": S(0.4, NOT + "the statistical LCM A_S as ML-GCN's (tau 0.4, p 0.2)"),
        "detector.arch": S("rpn", "Sec. 3.1 / 3.4: ROIs from an RPN (Ren et al. 2015, Faster "
                                  "R-CNN); its backbone and training data are not given"),
        "detector.max_instances": S(40, f"{s}: N = 40"),
        "detector.pretrained": S("pre-trained (data not given)",
                                 NOT + "the RPN's training data; the public Faster R-CNN "
                                       "weights are COCO train2017"),
        "optimizer": S("sgd", f"{s} 'Training Strategy': SGD"),
        "momentum": S(0.9, f"{s} 'Training Strategy': momentum 0.9"),
        "weight_decay": S(1e-4, f"{s} 'Training Strategy': weight decay 1e-4"),
        "lr": S(0.01, f"{s} 'Training Strategy': 0.01 for all but ResNet-101"),
        "backbone_lr": S(0.001, f"{s} 'Training Strategy': 0.001 for the ResNet module"),
        "lr_step": S(30, f"{s} 'Training Strategy': decay by 10 every 30 epochs"),
        "lr_gamma": S(0.1, f"{s} 'Training Strategy': factor of 10"),
        "epochs": S(120, f"{s} 'Training Strategy': 120 epochs in total"),
        "batch_size": S(32, NOT + "ML-GCN's (from A-GCN, which keeps its settings)"),
    }


def _iml_gcn() -> Dict[str, S]:
    s = "'Implementation details'"
    return {
        "backbone": S("tresnet_m", "'Direct subnetwork: TResNet': TResNetM, d = 2048"),
        "backbone_init": S("imagenet", "'Image feature embeddings': TResNetM initialised with "
                                       "ImageNet weights"),
        "model.pool": S("avg", "'Direct subnetwork': F_GAP, global average pooling"),
        "image_size": S(448, NOT + "the COCO input size of the other four papers"),
        "augment": S("randaugment", f"{s}: RandAugment, as the ASL baseline (Ridnik et al. "
                                    "2021a)"),
        "label_embeddings": S("image-features", "Eqs. 5-6: mean GAP feature of each label's "
                                                "training images, reduced by PCA"),
        "pca_components": S("C (80 on COCO)", "Table 1 caption: n_components = 80"),
        "stage1": S("train the CNN to convergence", "'Image feature embeddings'; the stage-1 "
                    "recipe is not given: IML-GCN's own is used"),
        "loss": S("ASL", f"{s}: Asymmetric Loss (gamma+ 0, gamma- 4, clip 0.05: ASL's "
                         "defaults, not given)"),
        "model.tau": S(0.1, f"{s}: tau = 0.1 in Eq. 3"),
        "optimizer": S("adam", f"{s}: Adam"),
        "weight_decay": S(5e-4, f"{s}: weight decay 5e-4"),
        "lr": S(1e-3, f"{s}: learning rate 1e-3"),
        "backbone_lr": S(None, NOT + "a separate backbone rate (one rate for all)"),
        "lr_step": S(None, f"{s}: multi-step schedule"),
        "lr_milestones": S([10, 20, 30], f"{s}: decayed at the 10, 20 and 30th epochs"),
        "lr_gamma": S(0.1, f"{s}: factor 0.1"),
        "epochs": S(40, f"{s}: 40 epochs"),
        "batch_size": S(32, NOT + "the 32 of the other papers' recipes"),
    }


def _gm_mlic(dataset: str) -> Dict[str, S]:
    s = "Sec. 4.2"
    voc = dataset == "voc2007"
    return {
        "backbone": S(None, f"{s}: the instance features come from the detector; no other "
                            "image CNN is described"),
        "image_size": S(448, f"{s}: randomly cropped and resized into 448 x 448"),
        "augment": S("crop_flip", f"{s}: random crop resized to 448 x 448, random "
                                  "horizontal flips"),
        "label_embeddings": S("glove300", f"{s}: 300-dim GloVe trained on Wikipedia"),
        "model.conv_channels": S([512, 256], f"{s}: k = 2 convolution modules of 512 and "
                                             "256"),
        "model.max_instances": S(10 if voc else 35, "Sec. 4.4 'Hyper-parameter', Fig. 4(a): "
                                 "m = 10 on VOC 2007, 35 on MS-COCO and NUS-WIDE"),
        "model.beta": S(0.0 if voc else 0.4, f"{s}: beta of Eq. 15 = 0 on VOC 2007, 0.4 on "
                                             "MS-COCO and NUS-WIDE"),
        "detector.arch": S("detections", f"{s}: Faster R-CNN (resnet50-fpn), instances with "
                                         "feature, box, class and confidence; top-m by "
                                         "confidence"),
        "detector.max_instances": S(10 if voc else 35, "m (Sec. 4.4)"),
        "detector.pretrained": S("pre-trained (data not given)",
                                 "Sec. 3.2: 'a pre-trained Faster R-CNN'; the public R50-FPN "
                                 "weights are COCO train2017"),
        "optimizer": S("sgd", f"{s}: SGD"),
        "momentum": S(0.9, f"{s}: momentum 0.9"),
        "weight_decay": S(1e-4, f"{s}: weight decay 1e-4"),
        "lr": S(0.01, f"{s}: initial learning rate 0.01"),
        "backbone_lr": S(0.001, NOT + "0.1 x lr as ML-GCN (the image encoder does not reach "
                                      "the logits)"),
        "lr_step": S(30, f"{s}: decays by a factor of 10 every 30 epochs"),
        "lr_gamma": S(0.1, f"{s}: factor of 10"),
        "epochs": S(100, NOT + "ML-GCN's"),
        "batch_size": S(32, NOT + "ML-GCN's (from A-GCN, which keeps its settings)"),
    }


#: ML-Decoder's and Query2Label's paper texts were not at hand: their settings and numbers
#: cite the authors' repositories (the papers' reproduction code), at the commits read
MLD_REPO = "github.com/Alibaba-MIIL/ML_Decoder@8a9ea59"
Q2L_REPO = "github.com/SlongLiu/query2labels@55eb050"


def _ml_decoder() -> Dict[str, S]:
    t, h = f"{MLD_REPO} train.py", f"{MLD_REPO} src_files/ml_decoder/ml_decoder.py"
    return {
        "backbone": S("tresnet_l", f"{t}: --model-name tresnet_l (README 'Multi-label "
                                   "Training Code': the MS-COCO reproduction command)"),
        "backbone_init": S("imagenet", NOT + f"{t} starts from tresnet_l_pretrain_ml_decoder"
                                             ".pth (--model-path), whose pretraining data "
                                             "is not stated; ImageNet weights are what "
                                             "--backbone-weights loads"),
        "image_size": S(448, f"{t}: --image-size 448"),
        "augment": S("resize_cutout_randaugment", f"{t}: Resize((448, 448)), "
                     "CutoutPIL(cutout_factor=0.5), RandAugment(); no crop, no flip"),
        "loss": S("ASL", f"{t}: AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, "
                         "disable_torch_grad_focal_loss=True), summed (losses.py: "
                         "-loss.sum())"),
        "model.asl_gamma_neg": S(4.0, f"{t}: gamma_neg=4"),
        "model.asl_gamma_pos": S(0.0, f"{t}: gamma_pos=0"),
        "model.asl_clip": S(0.05, f"{t}: clip=0.05"),
        "model.asl_disable_focal_grad": S(True, f"{t}: disable_torch_grad_focal_loss=True"),
        "model.asl_reduction": S("sum", f"{MLD_REPO} src_files/loss_functions/losses.py: "
                                        "AsymmetricLoss returns -loss.sum()"),
        "model.num_groups": S(100, f"{t}: --num-of-groups -1; {h}: -1 means 100 groups, "
                                   "capped at C (80 on COCO: full decoding, one query per "
                                   "label)"),
        "model.embed_dim": S(768, f"{t}: --decoder-embedding 768 (whatever the backbone's "
                                  "width: 2432 for timm's tresnet_l)"),
        "model.ffn_dim": S(2048, f"{h}: dim_feedforward = 2048"),
        "model.heads": S(8, f"{h}: TransformerDecoderLayerOptimal(nhead=8)"),
        "model.decoder_layers": S(1, f"{h}: num_layers_decoder = 1"),
        "model.dropout": S(0.1, f"{h}: decoder_dropout = 0.1"),
        "model.queries": S("fixed", f"{h}: query_embed.requires_grad_(False) (non-learnable "
                                    "queries)"),
        "optimizer": S("adam", f"{t}: torch.optim.Adam"),
        "weight_decay": S(1e-4, f"{t}: weight_decay = 1e-4 (add_weight_decay: biases and "
                                "1-d parameters exempt)"),
        "lr": S(1e-4, f"{t}: --lr 1e-4"),
        "backbone_lr": S(None, f"{t}: one rate for all parameters"),
        "schedule": S("onecycle", f"{t}: OneCycleLR(max_lr=lr, pct_start=0.2), stepped per "
                                  "batch"),
        "lr_step": S(None, f"{t}: no step decay (one-cycle schedule)"),
        "lr_gamma": S(None, f"{t}: no step decay (one-cycle schedule)"),
        "ema": S(0.9997, f"{t}: ModelEma(model, 0.9997)"),
        "epochs": S(40, f"{t}: Epochs = 40"),
        "batch_size": S(56, f"{t}: --batch-size 56"),
        "mixed_precision": S("fp16", f"{t}: autocast() + GradScaler (not applied: fp32 "
                                     "here)"),
        "selection": S("best val2014 epoch, max(raw, EMA)",
                       f"{t}: validate_multi returns max(mAP regular, mAP EMA), highest_mAP "
                       "kept; val2014 is the test split"),
    }


def _q2l() -> Dict[str, S]:
    r, m = f"{Q2L_REPO} README.md '5. Train'", f"{Q2L_REPO} main_mlc.py"
    return {
        "backbone": S("resnet101", f"{r}: --backbone resnet101"),
        "backbone_init": S("imagenet", f"{r}: --pretrained (ImageNet)"),
        "image_size": S(448, f"{r}: --img_size 448"),
        "augment": S("resize_cutout_randaugment",
                     f"{Q2L_REPO} lib/dataset/get_dataset.py: Resize((448, 448)), "
                     "SLCutoutPIL, RandAugment(); README: --cutout --n_holes 1 --cut_fact "
                     "0.5; no crop, no flip"),
        "loss": S("ASL", f"{r}: --gamma_pos 0 --gamma_neg 2 --dtgfl; {m}: --loss_clip 0.0 "
                         "(default)"),
        "model.asl_gamma_neg": S(2.0, f"{r}: --gamma_neg 2"),
        "model.asl_gamma_pos": S(0.0, f"{r}: --gamma_pos 0"),
        "model.asl_clip": S(0.0, f"{m}: --loss_clip default 0.0"),
        "model.asl_disable_focal_grad": S(True, f"{r}: --dtgfl"),
        "model.asl_reduction": S("sum", NOT + f"{Q2L_REPO} lib/models/aslloss.py "
                                              "AsymmetricLossOptimized returns the sum / "
                                              "batch size; under AdamW (decoupled weight "
                                              "decay) the same steps up to Adam's eps"),
        "transformer": S("d = 2048, FFN 8192, 1 encoder + 2 decoder layers, 4 heads",
                         f"{r}: --hidden_dim 2048 --dim_feedforward 8192 --enc_layers 1 "
                         "--dec_layers 2 --nheads 4; the q2l model's default widths (d = D, "
                         "FFN 4d) are these at ResNet-101's D = 2048"),
        "model.heads": S(4, f"{r}: --nheads 4"),
        "model.encoder_layers": S(1, f"{r}: --enc_layers 1"),
        "model.decoder_layers": S(2, f"{r}: --dec_layers 2"),
        "model.dropout": S(0.1, f"{m}: --dropout default 0.1"),
        "model.position_embedding": S("sine", f"{m}: --position_embedding default 'sine'"),
        "model.decoder_self_attention": S(
            "all", NOT + "the paper's decoder (self-attention in every layer, as "
                   "docs/methods/q2l.rst gives it; the paper text was not read here). The "
                   f"released code removes it: {Q2L_REPO} lib/models/transformer.py "
                   "rm_self_attn_dec=True, rm_first_self_attn=True unless "
                   "--keep_other_self_attn_dec / --keep_first_self_attn_dec, which the "
                   "README command does not pass (--model-opt "
                   "q2l.decoder_self_attention=none trains that variant)"),
        "optimizer": S("adamw", f"{r}: --optim AdamW"),
        "weight_decay": S(1e-2, f"{r}: --weight-decay 1e-2 (one parameter group)"),
        "lr": S(1e-4, f"{r}: --lr 1e-4 ({m}: the optimiser's lr is scaled by batch/256, "
                      "but OneCycleLR(max_lr=args.lr) sets the peak back to 1e-4)"),
        "backbone_lr": S(None, f"{m}: one parameter group, one rate"),
        "schedule": S("onecycle", f"{m}: OneCycleLR(..., pct_start=0.2), stepped per batch"),
        "lr_step": S(None, f"{m}: no step decay (one-cycle schedule)"),
        "lr_gamma": S(None, f"{m}: no step decay (one-cycle schedule)"),
        "ema": S(0.9997, f"{m}: --ema-decay default 0.9997"),
        "epochs": S(80, f"{r}: --epochs 80 (with --early-stop)"),
        "batch_size": S(64, f"{r}: --batch-size 64 (one process; 128 over two)"),
        "mixed_precision": S("fp16", f"{r}: --amp (not applied: fp32 here)"),
        "selection": S("best val2014 epoch, max(raw, EMA), early stop",
                       f"{m}: best_mAP over epochs of max(regular, EMA); --early-stop after 8 "
                       "epochs without a better val2014 mAP; val2014 is the test split"),
    }


#: ``PAPER_SETTINGS[method][dataset][key] = S(value, source)``: every setting of a run.
#: Keys: ``backbone``, ``backbone_init``, ``image_size``, ``augment``,
#: ``label_embeddings``, :class:`~pyg_mlic.engine.TrainConfig` fields, ``model.<option>``
#: (a model option), ``detector.<setting>``; the others are documentation.
PAPER_SETTINGS: Dict[str, Dict[str, Dict[str, S]]] = {
    "ml_gcn": {"coco": _ml_gcn(), "voc2007": _ml_gcn()},
    "a_gcn": {"coco": _a_gcn()},
    "ia_gcn": {"coco": _ia_gcn(), "voc2007": _ia_gcn()},
    "iml_gcn": {"coco": _iml_gcn()},
    "gm_mlic": {d: _gm_mlic(d) for d in DATASETS},
    "ml_decoder": {"coco": _ml_decoder()},
    "q2l": {"coco": _q2l()},
}
#: the :class:`~pyg_mlic.engine.TrainConfig` fields a paper setting sets (``schedule`` and
#: ``ema`` only where the paper gives them: the one-cycle recipes of ML-Decoder / Q2L)
TRAIN_KEYS = ("optimizer", "momentum", "weight_decay", "lr", "backbone_lr", "lr_step",
              "lr_milestones", "lr_gamma", "epochs", "batch_size", "schedule", "ema")
AUGMENT_TEXT = {"crop_flip": "random crop resized to the input size + random horizontal flip",
                "crop": "random crop resized to the input size",
                "resize512_crop448_flip": "resize to 512 x 512, random 448 x 448 crop, flip",
                "randaugment": "RandAugment",
                "resize_cutout_randaugment": "resize to the input size, Cutout (half the "
                                             "side), RandAugment; no crop, no flip"}
#: the data-config overrides (:data:`pyg_mlic.data.factory.DATA_OPTIONS`) that give an
#: ``augment`` setting's geometry where the model's ``default_data_config`` (RandAugment,
#: Cutout) leaves the library's random-resized crop and flip
AUGMENT_DATA_CONFIG = {"resize_cutout_randaugment": {"train": "resize", "flip_p": 0.0}}
#: what a recipe's code does that pyg_mlic's engine does not (printed as deviations)
RECIPE_DEVIATIONS = {
    "ml_decoder": [
        "weight decay on every parameter (paper code: biases and 1-d parameters exempt, "
        f"add_weight_decay in {MLD_REPO} train.py)",
        "selection: the last epoch's EMA weights are evaluated (paper code: the best "
        "val2014 epoch, max of raw and EMA mAP, val2014 being the test split)",
    ],
    "q2l": [
        "selection: the last epoch's EMA weights are evaluated (paper code: the best "
        "val2014 epoch, max of raw and EMA mAP, with early stopping on it; val2014 is the "
        "test split)",
    ],
}


def paper_settings(method: str, dataset: str) -> Tuple[Dict[str, S], Optional[str]]:
    """``(settings, note)``: the method's settings for ``dataset``; a dataset its paper
    has no experiment on gets the paper's COCO settings and a note saying so."""
    table = PAPER_SETTINGS[method]
    if dataset in table:
        return table[dataset], None
    first = next(iter(table))
    return table[first], (f"the {method_title(method)} paper reports no {dataset} "
                          f"experiment: its {first} settings are used")


def method_title(method: str) -> str:
    return PAPERS[method].split(" (")[0]


# ============================================================================ tables
COCO13 = ["mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "CP_top3", "CR_top3", "CF1_top3",
          "OP_top3", "OR_top3", "OF1_top3"]
COCO7 = COCO13[:7]
NUS5 = ["mAP", "CF1", "OF1", "CF1_top3", "OF1_top3"]
VOC_SHORT = ["aero", "bike", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "table", "dog", "horse", "motor", "person", "plant", "sheep", "sofa", "train", "tv"]
VOC21 = [f"AP:{i}" for i in range(20)] + ["mAP"]
#: kept for the tests that read them under these names
COCO_COLUMNS = COCO13


@dataclass
class Table:
    """One paper table: ``rows[label]`` are the values of ``columns`` in % (``None``:
    not reported); ``notes[label]`` says where a row comes from when that needs saying."""

    title: str
    columns: List[str]
    rows: Dict[str, List[Optional[float]]]
    notes: Dict[str, str] = field(default_factory=dict)

    def header(self) -> List[str]:
        return [VOC_SHORT[int(c[3:])] if c.startswith("AP:")
                else c.replace("_top3", "-3") for c in self.columns]


#: ML-GCN Table 1 (MS-COCO): mAP, CP, CR, CF1, OP, OR, OF1, then the top-3 CP ... OF1.
PAPER_COCO: Dict[str, List[Optional[float]]] = {
    "ResNet-101 (GAP)": [77.3, 80.2, 66.7, 72.8, 83.9, 70.8, 76.8, 84.1, 59.4, 69.7, 89.1,
                         62.8, 73.6],
    "ResNet-101 (GMP)": [81.9] + [None] * 12,
    "ML-GCN (Binary)": [80.3, 81.1, 70.1, 75.2, 83.8, 74.2, 78.7, 84.9, 61.3, 71.2, 88.8, 65.2,
                        75.2],
    "ML-GCN (Re-weighted)": [83.0, 85.1, 72.0, 78.0, 85.8, 75.4, 80.3, 89.2, 64.1, 74.6, 90.5,
                             66.5, 76.7],
}
#: ML-GCN Table 2 (VOC 2007 test): AP of the 20 classes (VOC order), then mAP.
PAPER_VOC: Dict[str, List[Optional[float]]] = {
    "ResNet-101 (GAP)": [99.5, 97.7, 97.8, 96.4, 65.7, 91.8, 96.1, 97.6, 74.2, 80.9, 85.0,
                         98.4, 96.5, 95.9, 98.4, 70.1, 88.3, 80.2, 98.9, 89.2, 89.9],
    "ResNet-101 (GMP)": [None] * 21,
    "ML-GCN (Binary)": [99.6, 98.3, 97.9, 97.6, 78.2, 92.3, 97.4, 97.4, 79.2, 94.4, 86.5, 97.4,
                        97.9, 97.1, 98.7, 84.6, 95.3, 83.0, 98.6, 90.4, 93.1],
    "ML-GCN (Re-weighted)": [99.5, 98.5, 98.6, 98.1, 80.8, 94.6, 97.2, 98.2, 82.3, 95.7, 86.4,
                             98.2, 98.4, 96.7, 99.0, 84.7, 96.7, 84.3, 98.9, 93.7, 94.0],
}
_GAP_NOTE = ("the row 'ResNet-101 [10]' of the table: a plain ResNet-101 with global "
             "*average* pooling, whose numbers ML-GCN quotes from earlier work")
_GMP_NOTE = ("not in ML-GCN's tables: ResNet-101 with ML-GCN's global *max* pooling; 81.9 "
             "mAP on COCO is the figure of issue 'Paper-faithful recipes' item 2, whose "
             "source is not among the five papers; no VOC figure")

_AGCN_COCO = {
    "Our baseline (ResNet101)": [80.3, 77.8, 72.8, 75.2, 81.5, 75.1, 78.2, 82.5, 64.6, 72.4,
                                 87.3, 65.7, 75.0],
    "A-GCN": [83.1, 84.7, 72.3, 78.0, 85.6, 75.5, 80.3, 89.0, 64.2, 74.6, 90.5, 66.3, 76.6],
    "A-GCN (w/o L_A)": [82.78, 83.04, 72.87, 77.63, 84.45, 75.75, 79.87, 87.48, 64.73, 74.4,
                        89.55, 66.54, 76.35],
    "Cos-A (w L_A)": [82.77, 84.89, 71.67, 77.72, 85.77, 74.83, 79.93, 88.92, 64.03, 74.45,
                      90.24, 66.2, 76.37],
    "FC-A (w L_A)": [82.85, 83.65, 72.45, 77.65, 84.99, 75.56, 80.0, 88.29, 64.23, 74.37, 89.95,
                     66.3, 76.34],
    "Dot-A (w L_A)": [82.22, 84.64, 70.93, 77.18, 85.86, 74.65, 79.87, 88.74, 63.19, 73.82,
                      90.37, 65.93, 76.24],
    "ML-GCN (Re-weighted)*": [82.5, 83.7, 72.0, 77.4, 84.7, 75.5, 79.8, 88.4, 63.8, 74.1, 89.9,
                              66.2, 76.3],
}
_IAGCN_COCO = {  # IA-GCN Table 3 (its last row is Table 1's IA-GCN row)
    "Base": [82.9, 83.7, 72.7, 77.9, 84.5, 76.2, 80.1],
    "Base+ID_LCM": [85.4, 86.1, 73.3, 79.2, 88.0, 75.6, 81.3],
    "Base+ID_LCM+Var_Inf": [86.0, 84.7, 77.0, 80.6, 85.3, 80.1, 82.6],
    "IA-GCN": [86.3, 85.1, 77.1, 80.9, 85.5, 80.5, 82.9],
}
_IAGCN_VOC = {  # IA-GCN Table 4
    "Base": [93.0, 85.9, 86.1, 86.0, 84.7, 89.3, 86.9],
    "Base+ID_LCM": [94.0, 85.5, 89.7, 87.6, 87.1, 90.0, 88.5],
    "Base+ID_LCM+Var_Inf": [94.4, 84.5, 91.2, 87.7, 86.2, 92.2, 89.1],
    "IA-GCN": [94.8, 85.9, 91.0, 88.3, 87.7, 92.2, 89.9],
}
_IA_NOTES = {"Base": "ML-GCN, as IA-GCN trained it (all three modules off)",
             "IA-GCN": "Base+ID_LCM+Var_Inf+Com_Sco (= the IA-GCN row of Tables 1-2)"}
_IMLGCN_COCO = {
    "ASL (TResNetM)": [81.8, 82.1, 72.6, 76.4, 83.1, 76.1, 79.4],
    "IML-GCN with F_I": [85.9, 82.7, 78.9, 80.5, 84.6, 82.1, 83.3],
    "IML-GCN with F_PCA": [86.6, 78.8, 82.6, 80.2, 79.0, 85.1, 81.9],
}
_GMMLIC_COCO = {
    "ResNet-101": [77.3, 80.2, 66.7, 72.8, 83.9, 70.8, 76.8, 84.1, 59.4, 69.7, 89.1, 62.8,
                   73.6],
    "ML-GCN": [83.0, 85.1, 72.0, 78.0, 85.8, 75.4, 80.3, 89.2, 64.1, 74.6, 90.5, 66.5, 76.7],
    "GM-MLIC": [84.3, 87.3, 70.8, 78.3, 88.6, 74.8, 80.6, 90.6, 67.3, 74.9, 94.0, 69.8, 77.8],
}
_GMMLIC_VOC = {  # the 3rd, 5th and 8th columns of GM-MLIC Table 1 (printed transposed)
    "ResNet-101": PAPER_VOC["ResNet-101 (GAP)"],
    "ML-GCN": PAPER_VOC["ML-GCN (Binary)"],
    "GM-MLIC": [99.4, 98.7, 98.5, 97.6, 86.3, 97.1, 98.0, 99.4, 82.5, 98.1, 87.7, 99.2, 98.9,
                97.5, 99.3, 87.0, 98.3, 86.5, 99.1, 94.9, 94.7],
}
_GMMLIC_NUS = {"GM-MLIC": [62.2, 61.0, 74.1, 55.3, 72.5]}
_GM_ABLATION = ("Table 4 (ablations) is a bar chart: its values are not in the text")
#: Query2Label Table 1 (MS-COCO), read from the image of it in the authors' repository
#: (README 'Results on MS-COCO': images/coco_q2l_results.png): the "ResNet-101 [25]"
#: (224 px), "Q2L-R101(Ours)" (448 px) and "ASL [1]" (TResNet-L, 448 px) rows
_Q2L_COCO = {
    "ResNet-101": [78.3, 80.2, 66.7, 72.8, 83.9, 70.8, 76.8, 84.1, 59.4, 69.7, 89.1, 62.8,
                   73.6],
    "Q2L-R101": [84.9, 84.8, 74.5, 79.3, 86.6, 76.9, 81.5, 78.0, 69.1, 73.3, 80.7, 70.8,
                 75.4],
}
_ASL_TRESNET_L = [86.6, 87.2, 76.4, 81.4, 88.2, 79.2, 81.8, 91.8, 63.4, 75.1, 92.9, 66.4, 77.4]
#: ML-Decoder on MS-COCO, TResNet-L at 448 px: mAP only (the authors' MODEL_ZOO.md)
_MLD_COCO = {
    "ASL (TResNet-L)": list(_ASL_TRESNET_L),
    "ML-Decoder (TResNet-L)": [90.1] + [None] * 12,
}
_Q2L_TABLE = f"{Q2L_REPO} images/coco_q2l_results.png (Table 1)"

PAPER_TABLES: Dict[str, Dict[str, Table]] = {
    "ml_gcn": {
        "coco": Table("ML-GCN Table 1 (MS-COCO val2014)", COCO13, PAPER_COCO,
                      {"ResNet-101 (GAP)": _GAP_NOTE, "ResNet-101 (GMP)": _GMP_NOTE}),
        "voc2007": Table("ML-GCN Table 2 (VOC 2007 test, AP per class and mAP)", VOC21,
                         PAPER_VOC, {"ResNet-101 (GAP)": _GAP_NOTE,
                                     "ResNet-101 (GMP)": _GMP_NOTE}),
    },
    "a_gcn": {
        "coco": Table("A-GCN Table 1 (MS-COCO)", COCO13, _AGCN_COCO,
                      {"Our baseline (ResNet101)": "A-GCN's own baseline; its pooling is not "
                                                   "stated (GMP here)",
                       "ML-GCN (Re-weighted)*": "A-GCN's re-implementation of ML-GCN"}),
    },
    "ia_gcn": {
        "coco": Table("IA-GCN Table 3 (MS-COCO)", COCO7, _IAGCN_COCO, dict(_IA_NOTES)),
        "voc2007": Table("IA-GCN Table 4 (VOC 2007)", COCO7, _IAGCN_VOC, dict(_IA_NOTES)),
    },
    "iml_gcn": {
        "coco": Table("IML-GCN Table 1 (MS-COCO)", COCO7, _IMLGCN_COCO,
                      {"ASL (TResNetM)": "quoted from ASL (Ridnik et al. 2021a); measured: "
                                         "stage 1 of the IML-GCN recipe (TResNet-M, GAP, "
                                         "ASL)"}),
    },
    "gm_mlic": {
        "coco": Table("GM-MLIC Table 2 (MS-COCO)", COCO13, _GMMLIC_COCO,
                      {"ML-GCN": "quoted from ML-GCN (Re-weighted); trained here with "
                                 "ML-GCN's recipe",
                       "ResNet-101": _GAP_NOTE + "; trained here with ML-GCN's recipe"}),
        "voc2007": Table("GM-MLIC Table 1 (VOC 2007, AP per class and mAP)", VOC21,
                         _GMMLIC_VOC,
                         {"ML-GCN": "quoted from ML-GCN (Binary); trained here with "
                                    "ML-GCN's recipe, binary scheme",
                          "ResNet-101": _GAP_NOTE + "; trained here with ML-GCN's recipe",
                          "GM-MLIC": "as printed: its 20 APs average 95.2, not the 94.7 mAP "
                                     "the paper gives"}),
        "nuswide": Table("GM-MLIC Table 3 (NUS-WIDE)", NUS5, _GMMLIC_NUS),
    },
    "ml_decoder": {
        "coco": Table("ML-Decoder, MS-COCO 2014, TResNet-L 448 px (the authors' model zoo)",
                      COCO13, _MLD_COCO,
                      {"ML-Decoder (TResNet-L)":
                           f"mAP from {MLD_REPO} MODEL_ZOO.md ('TResNet_L | 448 | MS-COCO | "
                           "90.1'; 90.0 before that commit); the repository gives no CP ... "
                           "OF1",
                       "ASL (TResNet-L)":
                           "the ASL paper's TResNet-L 448 row (86.6: Alibaba-MIIL/ASL "
                           f"MODEL_ZOO.md; all 13 values: {_Q2L_TABLE}, row 'ASL [1]'); "
                           "measured: TResNet-L + GAP + linear head (the asl model) with "
                           "ML-Decoder's recipe. ML-Decoder's README figure "
                           "(pictures/ms_coco_scores.png) puts its own GAP TResNet-L at about "
                           "89.4 (read off a plot): the paper's 90.1 / 86.6 mixes the head "
                           "with another recipe and pretraining"}),
    },
    "q2l": {
        "coco": Table("Query2Label Table 1 (MS-COCO 2014)", COCO13, _Q2L_COCO,
                      {"Q2L-R101": f"the 448 px 'Q2L-R101(Ours)' row of {_Q2L_TABLE}; 84.9 "
                                   "also in the README's model table (Q2L-R101-448); its "
                                   "top-3 CP/OP (78.0 / 80.7) are below the all-label ones "
                                   "as printed",
                       "ResNet-101": f"the row 'ResNet-101 [25]' of {_Q2L_TABLE}: 224 px, "
                                     "from earlier work (ML-GCN Table 1's ResNet-101 row but "
                                     "for its mAP, 77.3 there); measured: ResNet-101 + GAP "
                                     "+ linear head (the asl model) with Query2Label's "
                                     "recipe and loss"}),
    },
}


@dataclass(frozen=True)
class Row:
    """A table row this script trains: ``label`` (the paper's row name), the registered
    ``model`` and its ``options``; ``recipe`` names the method whose paper settings train
    it (``None``: the method's own); ``dataset_options`` adds options per dataset."""

    label: str
    model: str
    options: Mapping[str, Any] = field(default_factory=dict)
    recipe: Optional[str] = None
    dataset_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


_OFF = {"id_lcm": False, "var_inf": False, "com_sco": False}
#: ``ROWS[method][key]``; :data:`DEFAULT_ROWS` are the rows run without ``--rows``
ROWS: Dict[str, Dict[str, Row]] = {
    "ml_gcn": {
        "baseline_avg": Row("ResNet-101 (GAP)", "baseline", {"pool": "avg"}),
        "baseline_max": Row("ResNet-101 (GMP)", "baseline", {"pool": "max"}),
        "binary": Row("ML-GCN (Binary)", "ml_gcn", {"scheme": "binary"}),
        "reweighted": Row("ML-GCN (Re-weighted)", "ml_gcn", {"scheme": "reweighted"}),
    },
    "a_gcn": {
        "baseline": Row("Our baseline (ResNet101)", "baseline", {"pool": "max"}),
        "a_gcn": Row("A-GCN", "a_gcn"),
        "no_la": Row("A-GCN (w/o L_A)", "a_gcn", {"alpha": 0.0}),
        "cos": Row("Cos-A (w L_A)", "a_gcn", {"variant": "cos"}),
        "fc": Row("FC-A (w L_A)", "a_gcn", {"variant": "fc"}),
        "dot": Row("Dot-A (w L_A)", "a_gcn", {"variant": "dot"}),
        "ml_gcn": Row("ML-GCN (Re-weighted)*", "ml_gcn", {"scheme": "reweighted"}),
    },
    "ia_gcn": {
        "base": Row("Base", "ia_gcn", dict(_OFF)),
        "id_lcm": Row("Base+ID_LCM", "ia_gcn", {"var_inf": False, "com_sco": False}),
        "var_inf": Row("Base+ID_LCM+Var_Inf", "ia_gcn", {"com_sco": False}),
        "ia_gcn": Row("IA-GCN", "ia_gcn"),
    },
    "iml_gcn": {
        "fpca": Row("IML-GCN with F_PCA", "iml_gcn", {"pca": True}),
        "fi": Row("IML-GCN with F_I", "iml_gcn", {"pca": False}),
    },
    "gm_mlic": {
        "resnet": Row("ResNet-101", "baseline", {"pool": "avg"}, recipe="ml_gcn"),
        "ml_gcn": Row("ML-GCN", "ml_gcn", {"scheme": "reweighted"}, recipe="ml_gcn",
                      dataset_options={"voc2007": {"scheme": "binary"}}),
        "gm_mlic": Row("GM-MLIC", "gm_mlic"),
        "no_gl": Row("Our w/o G_l", "gm_mlic", {"use_label_graph": False}),
        "no_go": Row("Our w/o G_o", "gm_mlic", {"use_instance_graph": False}),
        "no_ilm": Row("Our w/o ILM edges", "gm_mlic", {"use_matching_edges": False}),
    },
    "ml_decoder": {
        "asl": Row("ASL (TResNet-L)", "asl", {"pool": "avg"}),
        "ml_decoder": Row("ML-Decoder (TResNet-L)", "ml_decoder"),
    },
    "q2l": {
        "baseline": Row("ResNet-101", "asl", {"pool": "avg"}),
        "q2l": Row("Q2L-R101", "q2l"),
    },
}
DEFAULT_ROWS = {"ml_gcn": ["baseline_avg", "baseline_max", "binary", "reweighted"],
                "a_gcn": ["baseline", "a_gcn"], "ia_gcn": ["base", "ia_gcn"],
                "iml_gcn": ["fpca"], "gm_mlic": ["ml_gcn", "gm_mlic"],
                "ml_decoder": ["asl", "ml_decoder"], "q2l": ["baseline", "q2l"]}
#: the measured stage 1 of an IML-GCN run: the "ASL (TResNetM)" row
STAGE1_LABEL = "ASL (TResNetM)"


def parse_paper_tables(path: Path) -> Dict[str, Dict[str, List[float]]]:
    """Read the ResNet-101 and ML-GCN rows of Tables 1 and 2 from the plain-text ML-GCN
    paper (the tests check :data:`PAPER_COCO` / :data:`PAPER_VOC` against it); the
    ResNet-101 row is returned as ``"ResNet-101"``."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    out: Dict[str, Dict[str, List[float]]] = {"coco": {}, "voc": {}}
    pats = {"ResNet-101": r"^ResNet-101 \[10\] ((?:[\d.]+ ?)+)$",
            "ML-GCN (Binary)": r"^ML-GCN \(Binary\) ((?:[\d.]+ ?)+)$",
            "ML-GCN (Re-weighted)": r"^ML-GCN \(Re-weighted\) ((?:[\d.]+ ?)+)$"}
    for name, pat in pats.items():
        for m in re.finditer(pat, text, flags=re.M):
            vals = [float(v) for v in m.group(1).split()]
            key = "coco" if len(vals) == 13 else "voc" if len(vals) == 21 else None
            if key and name not in out[key]:
                out[key][name] = vals
    return out


# ============================================================================ run plan
@dataclass
class Plan:
    """What one method's run does and how it differs from the paper."""

    method: str
    dataset: str
    rows: List[str]
    settings: Dict[str, S]
    deviations: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    leakage: Optional[Dict[str, Any]] = None


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def resolve_rows(method: str, rows: Optional[Sequence[str]]) -> List[str]:
    """The row keys to run (``None``/``["default"]``: :data:`DEFAULT_ROWS`; ``["all"]``:
    every row of the method)."""
    if not rows or list(rows) == ["default"]:
        return list(DEFAULT_ROWS[method])
    if list(rows) == ["all"]:
        return list(ROWS[method])
    bad = [r for r in rows if r not in ROWS[method]]
    if bad:
        raise SystemExit(f"--rows: {method} has no row {bad}; choose from "
                         f"{list(ROWS[method])}, 'default' or 'all'")
    return list(rows)


def row_settings(method: str, row: Row, dataset: str) -> Tuple[Dict[str, S], Optional[str]]:
    return paper_settings(row.recipe or method, dataset)


def _default_backbone(settings: Mapping[str, S]) -> str:
    b = settings.get("backbone")
    # GM-MLIC describes no image CNN besides its detector; pyg_mlic's GM-MLIC still runs an
    # image encoder (its global feature is reported in extras, not used by the logits)
    return b.value if b is not None and b.value else "small_cnn"


def _detector_name(args: argparse.Namespace) -> str:
    return {"torchvision": "torchvision Faster R-CNN R50-FPN",
            "detectron2": "detectron2 Faster R-CNN R50-FPN",
            "precomputed": "precomputed regions", "groundtruth": "ground-truth boxes (oracle)"
            }.get(args.detector, args.detector)


def detector_leakage(method: str, dataset: str, backend: str = "torchvision",
                     weights: Optional[str] = None,
                     trained_on: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """Whether a COCO-pretrained detector feeds a COCO-2014 number in this comparison.

    ``None`` unless ``method`` reads ROIs and ``dataset`` is COCO. Otherwise a dict:
    ``warn`` (print the warning), ``run`` (the measured numbers: ``"leak"``, ``"clean"``,
    ``"random"`` or ``"oracle"``) and ``text`` (what to print).

    A detector weights file (or precomputed regions) counts as COCO-train2017-trained
    (torchvision's and detectron2's public COCO weights) unless ``trained_on`` says
    ``"coco-train2014"`` (trained on train2014 only) or ``"no-coco"``; only such a
    declaration removes the warning. A randomly initialised detector does not leak, but
    the paper's rows it is compared with came from a pre-trained one, so the warning
    stays (the paper does not say on which data its detector was trained)."""
    if method not in REGION_METHODS or dataset != "coco":
        return None
    seen = (f"torchvision's and detectron2's COCO detectors were trained on COCO "
            f"train2017, which holds {VAL2014_IN_TRAIN2017:,} of the {VAL2014_IMAGES:,} "
            f"val2014 test images (all of val2014 but the 5,000 of val2017)")
    det = {"ia_gcn": "an RPN (Faster R-CNN)", "gm_mlic": "a pre-trained Faster R-CNN "
           "R50-FPN"}[method]
    paper = (f"the {method_title(method)} paper's COCO rows come from {det} whose training "
             f"data it does not give; if it is one of those, its COCO-2014 numbers are "
             f"optimistic")
    if backend == "groundtruth":
        run, warn = "oracle", False
        text = ("detector: ground-truth boxes (an oracle, no detector): no detector leakage "
                "in the measured numbers; " + paper + " (" + seen + ")")
    elif weights is None and backend in ("torchvision", "detectron2"):
        run, warn = "random", True
        text = (f"{seen}. {paper[0].upper() + paper[1:]}. This run's detector is randomly "
                "initialised: its numbers carry no leakage, and are not the paper's "
                "protocol either. Give --detector-weights FILE trained on COCO train2014 "
                "only, with --detector-trained-on coco-train2014, to remove this warning.")
    elif trained_on in ("coco-train2014", "no-coco"):
        run, warn = "clean", False
        what = ("COCO train2014 only" if trained_on == "coco-train2014"
                else "no COCO image")
        text = (f"detector weights declared trained on {what} (--detector-trained-on "
                f"{trained_on}): no val2014 image was seen, no leakage in the measured "
                f"numbers. Note: {paper} ({seen}).")
    else:
        run, warn = "leak", True
        src = "these precomputed regions" if backend == "precomputed" else \
            "the detector weights"
        text = (f"{src} are taken to be COCO-pretrained: {seen}, so the detector has seen "
                f"most test images and the measured COCO-2014 numbers of the region rows "
                f"are optimistic; so may be the paper's ({paper}). If the weights were "
                f"trained on COCO train2014 only, pass --detector-trained-on coco-train2014 "
                f"(this removes the warning).")
    return {"warn": warn, "run": run, "text": text}


def _cite(who: str, s: S) -> str:
    """``"paper: 100, Sec. 4.2: ..."``, or ``"paper: not given; 32 used: ..."``."""
    v = _fmt_value(s.value)
    if s.source.startswith(NOT):
        return f"{who}: not given; {v} used, {s.source[len(NOT):]}"
    return f"{who}: {v}, {s.source}"


def build_plan(method: str, args: argparse.Namespace, num_train: Optional[int] = None,
               classes_without_test_positive: int = 0,
               labels_without_train_positive: int = 0) -> Plan:
    """The method's settings, and every way this run differs from the paper's protocol."""
    dataset = args.dataset
    settings, note = paper_settings(method, dataset)
    rows = resolve_rows(method, args.rows)
    plan = Plan(method, dataset, rows, settings)
    dev, notes = plan.deviations, plan.notes
    if note:
        dev.append(note)
    if dataset not in PAPER_TABLES[method]:
        dev.append(f"the {method_title(method)} paper has no {dataset} table: no paper rows "
                   "to compare with")
    sources = [(method, settings)]
    for r in rows:
        rec = ROWS[method][r].recipe
        if not rec or rec == method:
            continue
        st, n = paper_settings(rec, dataset)
        if rec not in [m for m, _ in sources]:
            sources.append((rec, st))
        notes.append(f"row {ROWS[method][r].label}: trained with the {method_title(rec)} "
                     f"paper's settings" + (f" ({n})" if n else ""))
    for src, st in sources:
        who = "paper" if src == method else f"{method_title(src)} paper"
        pre = "" if src == method else f"{method_title(src)}-recipe rows: "
        b = st.get("backbone")
        if b is not None and b.value and args.backbone and args.backbone != b.value:
            dev.append(f"{pre}backbone {args.backbone} ({_cite(who, b)})")
        init = st.get("backbone_init")
        if init is not None and not args.backbone_weights:
            bb = args.backbone or (b.value if b else "?")
            dev.append(f"{pre}random backbone initialisation of {bb} ({who}: "
                       f"ImageNet-pretrained, {init.source})")
        size = st.get("image_size")
        if size is not None and args.image_size and args.image_size != size.value:
            dev.append(f"{pre}{args.image_size} px inputs ({_cite(who, size)})")
        ep = st.get("epochs")
        if args.epochs is not None and ep is not None and args.epochs != ep.value:
            dev.append(f"{pre}{args.epochs} epoch{'' if args.epochs == 1 else 's'} "
                       f"({_cite(who, ep)})")
        bs = st.get("batch_size")
        if args.batch_size is not None and bs is not None and args.batch_size != bs.value:
            dev.append(f"{pre}batch size {args.batch_size} ({_cite(who, bs)})")
        aug = st.get("augment")
        if aug is not None:
            cfg = data_config_for(src, args.backbone or _default_backbone(st), args)
            d = augmentation_deviation(aug, cfg, who)
            if d:
                dev.append(pre + d)
            elif aug.value == "crop" and cfg.get("flip_p"):
                notes.append(f"{pre}augmentation adds random horizontal flips (not "
                             f"mentioned by the {who}, {aug.source})")
            if cfg.get("train") == "resize_crop" and cfg.get("image_size") != 448 and \
                    aug.value == "resize512_crop448_flip":
                notes.append(f"{pre}augmentation: resize to {cfg.get('resize')} px, random "
                             f"{cfg.get('image_size')} px crop (the paper's 512 / 448 scaled)")
            if aug.value == "resize_cutout_randaugment" and cfg.get("randaugment") is not None:
                ra = cfg.get("randaugment") or "its defaults"
                notes.append(f"{pre}RandAugment is pyg_mlic's ({ra}; the model's "
                             f"default_data_config), Cutout {cfg.get('cutout')} of "
                             f"the side; the {who} code uses the 'randaugment' package's "
                             "RandAugment() and its own Cutout")
        dev.extend(pre + d for d in RECIPE_DEVIATIONS.get(src, []))
        ema = st.get("ema")
        if ema is not None and ema.value and num_train and ep is not None and bs is not None:
            steps = (args.epochs or ep.value) * math.ceil(num_train / (args.batch_size or
                                                                       bs.value))
            horizon = 1.0 / (1.0 - float(ema.value))
            if steps < horizon:
                notes.append(f"{pre}EMA decay {ema.value:g} averages over about "
                             f"{horizon:.0f} optimiser steps and this run makes {steps}: "
                             "the evaluated (EMA) weights stay close to the initialisation")
        mp = st.get("mixed_precision")
        if mp is not None:
            notes.append(f"{pre}fp32 training ({who}: {mp.value} mixed precision, "
                         f"{mp.source})")
    models = {ROWS[method][r].model for r in rows}
    for model, kv in model_overrides(args).items():
        if model is not None and model not in models:
            continue
        for k, v in kv.items():
            st = settings.get(f"model.{k}")
            where = f"{model}." if model else ""
            if st is not None:
                dev.append(f"model option {where}{k}={_fmt_value(v)} ({_cite('paper', st)})")
            else:
                dev.append(f"model option {where}{k}={_fmt_value(v)} (not a paper setting; "
                           "the model's default otherwise)")
    if args.backbone_weights:
        notes.append(f"backbone weights {Path(args.backbone_weights).name}: taken to be the "
                     "paper's ImageNet weights (not checked)")
    if args.num_train is not None:
        dev.append(f"training subset: {num_train if num_train is not None else args.num_train}"
                   f" images (--num-train; paper: the whole training split)")
    if args.num_test is not None:
        dev.append(f"test subset: {args.num_test} images (--num-test; paper: the whole "
                   "test split)")
    if args.device and args.device.startswith("cpu"):
        dev.append("device cpu (the papers train on GPUs; the numbers should not depend on "
                   "it beyond floating-point noise)")
    if args.seed:
        notes.append(f"seed {args.seed}")
    if classes_without_test_positive:
        dev.append(f"{classes_without_test_positive} classes have no test positive and are "
                   "left out of mAP and the per-class averages (the paper's test split has "
                   "positives for every class)")
    if method == "iml_gcn" and labels_without_train_positive:
        dev.append(f"{labels_without_train_positive} labels have no training image: their "
                   "image-feature embeddings are the mean of the others (on_missing='mean'; "
                   "every COCO label has training images)")
    emb = settings.get("label_embeddings")
    if emb is not None and emb.value == "glove300" and args.label_embeddings:
        notes.append(f"label embeddings {sanitize_text(args.label_embeddings)} (paper: "
                     f"{emb.source})")
    if emb is not None and emb.value == "glove300" and args.label_embeddings and \
            args.label_embeddings.strip().lower() == "onehot":
        dev.append("one-hot label embeddings (paper: 300-d GloVe)")
    if method == "gm_mlic":
        notes.append("GM-MLIC's ROI features are computed once from the stored (un-augmented)"
                     " image by the region backend; the crop/flip reaches only the image "
                     "encoder, whose output the logits do not use")
    if method in REGION_METHODS:
        det = settings.get("detector.arch")
        if args.detector == "groundtruth":
            dev.append("ground-truth boxes pooled from a backbone (an oracle) instead of the "
                       f"paper's detector ({det.source if det else '?'})")
        elif args.detector == "precomputed":
            notes.append("ROIs from precomputed regions (--detector precomputed): their "
                         "detector is the user's")
        else:
            if not args.detector_weights:
                dev.append(f"random initialisation of the detector ({_detector_name(args)}; "
                           f"paper: a pre-trained detector, {det.source if det else '?'})")
            if method == "ia_gcn":
                notes.append("IA-GCN's RPN: the paper gives neither its backbone nor its "
                             f"training data; {_detector_name(args)} proposals are used")
        if args.detector_size is not None:
            dev.append(f"detector input: shorter side {args.detector_size} px (the papers "
                       "give none; default: the backend's 800 / 1333)")
        plan.leakage = detector_leakage(method, dataset, args.detector, args.detector_weights,
                                        args.detector_trained_on)
    return plan


METRIC_RULES = [
    "threshold: a label is predicted when its probability is > 0.5 (the papers: 'greater "
    "than 0.5')",
    "top-3: a label counts for the top-3 metrics when it is among the image's 3 highest "
    "scores AND above the threshold (ML-GCN's released evaluation; the papers do not "
    "define it)",
    "mAP: mean over the classes with a test positive of the non-interpolated AP "
    "(sklearn's, ties included); CF1/OF1 are harmonic means of the averaged P and R",
    "VOC 2007: 'difficult' labels are ignored in the loss and in every metric",
    "selection: the last epoch is evaluated on the test split (no selection on it; the "
    "papers do not say)",
]


# ============================================================================ data
def default_embeddings(dataset: str) -> Optional[str]:
    """The GloVe vectors of the ML-GCN release in the shared data (COCO, VOC)."""
    name = {"coco": "glove300_coco.npz", "voc2007": "glove300_voc.npz"}.get(dataset)
    if name is None:
        return None
    p = data_dir() / "embeddings" / name
    return f"npz:{p}" if p.is_file() else None


def _subset(ds, n: Optional[int], seed: int, split: str):
    """A seeded random subset of ``n`` samples (all of them when ``n`` is None or larger)."""
    if n is None or n >= len(ds):
        return ds
    import numpy as np

    from pyg_mlic.data.base import SubsetDataset

    idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:max(1, int(n))])
    return SubsetDataset(ds, idx, split=split)


#: the model whose paper (and ``default_data_config``) sets a recipe's input pipeline
RECIPE_MODEL = {"ml_gcn": "ml_gcn", "a_gcn": "a_gcn", "ia_gcn": "ia_gcn", "iml_gcn": "iml_gcn",
                "gm_mlic": "gm_mlic", "ml_decoder": "ml_decoder", "q2l": "q2l"}


def _base(ds):
    """The dataset under subset / region wrappers (the one holding ``transform``)."""
    while ds is not None and not hasattr(ds, "transform") and hasattr(ds, "dataset"):
        ds = ds.dataset
    return ds


@functools.lru_cache(maxsize=None)
def _backbone_stats(backbone: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """``(mean, std)`` the backbone's weights expect (ImageNet's when it says none)."""
    try:
        from pyg_mlic.backbones.registry import data_config

        cfg = data_config(backbone)
    except ImportError:  # an older pyg_mlic: read the built backbone's default_cfg
        from pyg_mlic.backbones import build_backbone

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = getattr(build_backbone(backbone), "default_cfg", None) or {}
    from pyg_mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    return (tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
            tuple(float(v) for v in cfg.get("std", IMAGENET_STD)))


def data_config_for(recipe: str, backbone: str, args: argparse.Namespace) -> Dict[str, Any]:
    """The input pipeline of ``recipe``'s paper for ``backbone`` (nothing is loaded): the
    backbone's normalisation (preprocessing belongs to the weights: TResNet takes [0, 1]
    inputs) and the paper's augmentation where pyg_mlic has it (the model's
    ``default_data_config``: A-GCN's resize 512 + random 448 crop, IML-GCN's RandAugment,
    ML-Decoder's / Query2Label's RandAugment + Cutout; plus :data:`AUGMENT_DATA_CONFIG` for
    the paper's ``augment`` setting: their plain resize, no flip), as
    :func:`pyg_mlic.data.factory.resolve_data_config` resolves it. ``train`` is the
    training transform's kind (``"none"`` without augmentation)."""
    size = args.image_size or 448
    try:
        from pyg_mlic.data.factory import resolve_data_config
    except ImportError:  # an older pyg_mlic: build_splits' crop + flip, the backbone's stats
        mean, std = _backbone_stats(backbone)
        return {"backbone": backbone, "mean": list(mean), "std": list(std),
                "image_size": size, "flip_p": 0.5, "randaugment": None,
                "train": "none" if args.no_augment else "random_resized_crop"}
    from pyg_mlic.models import get_model_class

    aug = paper_settings(recipe, args.dataset)[0].get("augment")
    extra = AUGMENT_DATA_CONFIG.get(aug.value) if aug is not None else None
    return dict(resolve_data_config(args.dataset, model=get_model_class(RECIPE_MODEL[recipe]),
                                    backbone=backbone, image_size=size,
                                    augment=not args.no_augment, data_config=extra))


def apply_data_config(train, test, cfg: Mapping[str, Any]) -> None:
    """Give ``train`` / ``test`` the transforms of ``cfg`` (:func:`data_config_for`)."""
    try:
        from pyg_mlic.data.factory import transforms_from_config
    except ImportError:
        transforms_from_config = None
    if transforms_from_config is not None:
        train_tf, test_tf = transforms_from_config(cfg)
        _base(train).transform, _base(test).transform = train_tf, test_tf
        return
    for ds in (train, test):
        tf = getattr(_base(ds), "transform", None)
        if tf is not None and hasattr(tf, "mean") and hasattr(tf, "std"):
            tf.mean, tf.std = tuple(cfg["mean"]), tuple(cfg["std"])


def augmentation_deviation(paper: S, cfg: Mapping[str, Any], who: str) -> Optional[str]:
    """How the applied training transform ``cfg`` differs from the paper's (``None``: it
    does not)."""
    kind = cfg.get("train")
    if kind == "none":
        return f"no training augmentation ({who}: {AUGMENT_TEXT[paper.value]}, {paper.source})"
    if paper.value == "resize512_crop448_flip" and kind != "resize_crop":
        return (f"augmentation: {AUGMENT_TEXT['crop_flip']} ({who}: {AUGMENT_TEXT[paper.value]},"
                f" {paper.source}; this pyg_mlic has no such transform)")
    if paper.value == "randaugment" and not cfg.get("randaugment"):
        return (f"augmentation: {AUGMENT_TEXT['crop_flip']} without RandAugment ({who}: "
                f"{AUGMENT_TEXT[paper.value]}, {paper.source}; this pyg_mlic has no such "
                "transform)")
    if paper.value == "resize_cutout_randaugment":
        missing = [name for name, ok in (
            ("RandAugment", cfg.get("randaugment") is not None),
            ("Cutout", bool(cfg.get("cutout"))),
            ("a plain resize (no crop)", kind == "resize_crop" and
             int(cfg.get("resize") or 0) == int(cfg.get("image_size") or -1)),
            ("no flip", not cfg.get("flip_p"))) if not ok]
        if missing:
            return (f"augmentation: kind {kind}, flip_p {cfg.get('flip_p')}, RandAugment "
                    f"{'on' if cfg.get('randaugment') is not None else 'off'}, Cutout "
                    f"{cfg.get('cutout')} ({who}: {AUGMENT_TEXT[paper.value]}, "
                    f"{paper.source}; differs in: {', '.join(missing)})")
    return None


def load_splits(args: argparse.Namespace):
    """``(train, test)`` of ``--dataset`` (no validation split: the papers have none and
    the last epoch is evaluated), with ``--num-train`` / ``--num-test`` subsets."""
    from pyg_mlic.data.factory import build_splits

    image_size = args.image_size or 448
    train, _, test = build_splits(args.dataset, root=args.root, train_file=args.train_file,
                                  test_file=args.test_file, image_size=image_size,
                                  seed=args.seed, augment=not args.no_augment)
    return (_subset(train, args.num_train, args.seed, "train"),
            _subset(test, args.num_test, args.seed + 1, "test"))


def region_extractor(method: str, settings: Mapping[str, S], args: argparse.Namespace):
    """The region backend of a region method, configured as its paper says."""
    from pyg_mlic.detection import build_region_extractor

    opts = _parse_set(args.detector_opt)
    k = settings["detector.max_instances"].value
    if args.detector in ("torchvision", "detectron2"):
        opts.setdefault("mode", "rpn" if settings["detector.arch"].value == "rpn"
                        else "detections")
        if args.detector_weights:
            opts.setdefault("weights", str(Path(args.detector_weights).expanduser()))
        if args.detector_size is not None:
            opts.setdefault("min_size", int(args.detector_size))
            opts.setdefault("max_size", int(round(args.detector_size * 1333 / 800)))
    elif args.detector == "groundtruth":
        opts.setdefault("image_size", args.image_size or 448)
        if args.backbone:
            opts.setdefault("backbone", args.backbone)
        if args.backbone_weights:
            opts.setdefault("weights", args.backbone_weights)
    opts.setdefault("max_instances", int(k))
    ex = build_region_extractor(args.detector, verbose=False, **opts)
    device = _device(args)
    if device != "cpu":
        ex = ex.to(device)
    return ex


def _device(args: argparse.Namespace) -> str:
    if args.device:
        return args.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _parse_value(v: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"[64, 32]"`` -> [64, 32], ``"False"`` -> False,
    anything else stays a string."""
    import json

    if v in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[v]
    try:
        return json.loads(v)
    except ValueError:
        return v


def _parse_set(items: Optional[Sequence[str]], flag: str = "--detector-opt") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"{flag} wants KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def model_overrides(args: argparse.Namespace) -> Dict[Optional[str], Dict[str, Any]]:
    """``--model-opt [MODEL.]KEY=VALUE``: ``{model or None: {key: value}}``."""
    out: Dict[Optional[str], Dict[str, Any]] = {}
    for k, v in _parse_set(args.model_opt, "--model-opt").items():
        model, _, key = k.rpartition(".")
        out.setdefault(model or None, {})[key] = v
    return out


# ============================================================================ training
def _options(method: str, row: Row, dataset: str, args: argparse.Namespace
             ) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, S]]:
    """``(model_options, train_options, settings)`` of one row."""
    from pyg_mlic.models.registry import model_option_names

    settings, _ = row_settings(method, row, dataset)
    valid = set(model_option_names(row.model))
    opts: Dict[str, Any] = {}
    for key, s in settings.items():
        if key.startswith("model.") and key[6:] in valid:
            opts[key[6:]] = s.value
    opts.update(row.options)
    opts.update(row.dataset_options.get(dataset, {}))
    over = model_overrides(args)
    opts.update({k: v for k, v in over.get(None, {}).items() if k in valid})
    opts.update(over.get(row.model, {}))
    opts["backbone"] = args.backbone or _default_backbone(settings)
    paper_backbone = settings.get("backbone")
    if args.backbone_weights and (args.backbone or (paper_backbone and paper_backbone.value)):
        # the weights are the paper backbone's (or --backbone's); GM-MLIC's stand-in
        # encoder (no image CNN in the paper) stays randomly initialised
        opts["backbone_weights"] = str(Path(args.backbone_weights).expanduser())
    train = {k: settings[k].value for k in TRAIN_KEYS if k in settings}
    train.update({k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size).items()
                  if v is not None})
    train.update(device=args.device, num_workers=args.workers, seed=args.seed,
                 progress=not args.no_progress, select="last")
    return opts, {k: v for k, v in train.items() if v is not None or k == "backbone_lr"}, \
        settings


def _slim(m: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: v for k, v in m.items() if k not in ("history", "stage1", "two_stage")}
    if isinstance(out.get("settings"), dict):
        out["settings"] = {k: v for k, v in out["settings"].items() if k != "classes"}
    return out


def run_method(method: str, args: argparse.Namespace, train, test,
               region_sets: Dict[Tuple, Tuple], out_root: Path) -> Dict[str, Any]:
    """Train and evaluate the method's rows; ``{"measured": {label: metrics}, ...}``."""
    import numpy as np

    from pyg_mlic.engine import fit
    from pyg_mlic.metrics import UndefinedAPWarning

    ytr, yte = np.asarray(train.labels) > 0, np.asarray(test.labels) > 0
    no_test_pos = int((yte.sum(0) == 0).sum())
    no_train_pos = int((ytr.sum(0) == 0).sum())
    plan = build_plan(method, args, len(train), no_test_pos, no_train_pos)
    settings = plan.settings
    emb = args.label_embeddings or default_embeddings(args.dataset)
    measured: Dict[str, Any] = {}
    seconds: Dict[str, float] = {}
    stage1_ckpt: Optional[str] = None
    tmp_ctx = tempfile.TemporaryDirectory(prefix="pyg_mlic_reproduce_") \
        if args.no_checkpoint else contextlib.nullcontext(None)
    with tmp_ctx as tmp:
        for key in plan.rows:
            row = ROWS[method][key]
            opts, train_opts, rset = _options(method, row, args.dataset, args)
            tr, te = train, test
            if row.model in REGION_MODELS:
                ex_key = (method, args.dataset)
                if ex_key not in region_sets:
                    from pyg_mlic.detection import RegionDataset

                    t0 = time.time()
                    ex = region_extractor(method, settings, args)
                    cache = {"root": args.region_cache} if args.region_cache else {}
                    region_sets[ex_key] = tuple(
                        RegionDataset(ds, ex, progress=not args.no_progress,
                                      num_workers=args.workers, **cache) for ds in (train, test))
                    print(f"  {method} regions: {ex.backend} ({ex.config().get('mode', '-')}, "
                          f"K = {ex.max_instances}, D = {ex.feature_dim}) for "
                          f"{len(train) + len(test)} images, cached "
                          f"({time.time() - t0:.0f} s)", flush=True)
                tr, te = region_sets[ex_key]
            data_cfg = data_config_for(row.recipe or method, opts["backbone"], args)
            apply_data_config(tr, te, data_cfg)
            slug = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{method}_{key}").strip("_")
            out_dir = (Path(tmp) / slug) if tmp else out_root / slug
            label_emb: Any = emb
            if row.model == "iml_gcn":
                label_emb = "image-features"
                opts["on_missing"] = "mean" if no_train_pos else "error"
                if stage1_ckpt is not None:
                    opts["stage1_checkpoint"] = stage1_ckpt
            run_info = {"dataset": args.dataset, "root": str(args.root), "method": method,
                        "row": row.label, "image_size": args.image_size or 448,
                        "paper_settings": {k: v.value for k, v in rset.items()},
                        "data_config": data_cfg,
                        "detector": args.detector if row.model in REGION_MODELS else None,
                        "detector_weights": args.detector_weights
                        if row.model in REGION_MODELS else None}
            t0 = time.time()
            with warnings.catch_warnings():
                # tiny smoke sets have classes without test positives: said in the deviations
                warnings.simplefilter("ignore", UndefinedAPWarning)
                m = fit(row.model, tr, None, te, model_options=opts, train_options=train_opts,
                        label_embeddings=label_emb, out_dir=out_dir, resume=args.resume,
                        run_info=run_info)
            seconds[row.label] = time.time() - t0
            if row.model == "iml_gcn" and m.get("stage1") and STAGE1_LABEL not in measured:
                measured[STAGE1_LABEL] = _slim(m["stage1"])
                stage1_ckpt = str(out_dir / "stage1" / "final.pt")
            measured[row.label] = _slim(m)
            epochs = m.get("settings", {}).get("train_config", {}).get("epochs", "?")
            print(f"  {method} {row.label:<30} mAP {100 * m['mAP']:5.1f}  "
                  f"({seconds[row.label]:.0f} s, {epochs} epochs)", flush=True)
    table = PAPER_TABLES[method].get(args.dataset)
    return {"method": method, "dataset": args.dataset, "paper": PAPERS[method],
            "table": None if table is None else {"title": table.title, "columns": table.columns,
                                                 "rows": table.rows, "notes": table.notes},
            "paper_settings": {k: {"value": v.value, "source": v.source}
                               for k, v in settings.items()},
            "rows": plan.rows, "measured": measured, "seconds": seconds,
            "deviations": plan.deviations, "notes": plan.notes, "leakage": plan.leakage,
            "metric_rules": METRIC_RULES}


# ============================================================================ output
def _fmt(v: Optional[float], exact: bool = False) -> str:
    """A cell in %: one decimal, or the paper's two where it gives two (``exact``)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "      -"
    return f"{v:7.2f}" if exact and round(v, 1) != round(v, 6) else f"{v:7.1f}"


def measured_values(m: Mapping[str, Any], columns: Sequence[str]) -> List[Optional[float]]:
    """The measured metrics of ``columns`` in % (``AP:i``: class ``i``'s AP)."""
    out: List[Optional[float]] = []
    ap = m.get("AP") or []
    for c in columns:
        if c.startswith("AP:"):
            i = int(c[3:])
            v = ap[i] if i < len(ap) else None
        else:
            v = m.get(c)
        out.append(None if v is None or (isinstance(v, float) and math.isnan(v))
                   else 100 * float(v))
    return out


def format_comparison(res: Mapping[str, Any], width: int = 34) -> str:
    """The paper's rows beside the measured ones (values in %)."""
    t = res.get("table")
    meas = res["measured"]
    if t is None:
        cols = COCO13 if "CP_top3" in next(iter(meas.values()), {}) else COCO7
        table = Table("(no paper table)", cols, {})
    else:
        table = Table(t["title"], list(t["columns"]), dict(t["rows"]), dict(t["notes"]))
    head = [f"{h:>7}" for h in table.header()]
    split = 7 if len(table.columns) == 13 else None
    lines: List[str] = []
    if split:
        lines.append(f"{'':<{width + 9}}{'All':^49} |{'Top-3':^42}")
        header = f"{'Method':<{width + 9}}" + "".join(head[:7]) + " |" + "".join(head[7:])
    else:
        header = f"{'Method':<{width + 9}}" + "".join(head)
    lines += [header, "-" * len(header)]

    def line(prefix: str, label: str, vals: Sequence[Optional[float]]) -> str:
        cells = [_fmt(v, exact=prefix.startswith("paper")) for v in vals]
        body = ("".join(cells[:7]) + " |" + "".join(cells[7:])) if split else "".join(cells)
        return f"{prefix + label:<{width + 9}}" + body

    for label, m in meas.items():
        if label in table.rows:
            lines.append(line("paper    ", label, table.rows[label]))
        else:
            lines.append(line("paper    ", label, [None] * len(table.columns)) +
                         "   (no such row in the paper)")
        lines.append(line("measured ", label, measured_values(m, table.columns)))
    notes = [f"  {k}: {v}" for k, v in table.notes.items() if k in meas]
    if notes:
        lines.append("row notes:")
        lines += notes
    return "\n".join(lines)


def format_report(res: Mapping[str, Any]) -> str:
    """Everything printed for one method after its runs."""
    method = res["method"]
    out: List[str] = []
    title = res["table"]["title"] if res.get("table") else f"{method_title(method)} (no table)"
    out.append(f"\n{title}: paper vs measured, % ({res['num_train']} training / "
               f"{res['num_test']} test images)")
    out.append(format_comparison(res))
    if res["deviations"]:
        out.append("Deviations from the paper's protocol:")
        out += [f"  deviation: {d}" for d in res["deviations"]]
    else:
        out.append("Deviations from the paper's protocol: none")
    if res["notes"]:
        out.append("Notes:")
        out += [f"  note: {n}" for n in res["notes"]]
    out.append("Metric rules of the comparison:")
    out += [f"  {r}" for r in res["metric_rules"]
            if res.get("dataset") == "voc2007" or not r.startswith("VOC")]
    lk = res.get("leakage")
    if lk:
        if lk["warn"]:
            out.append(f"WARNING (detector leakage, {method_title(method)} on COCO-2014): "
                       + lk["text"])
        else:
            out.append("detector leakage: " + lk["text"])
    return "\n".join(out)


def format_settings(method: str, settings: Mapping[str, S]) -> str:
    lines = [f"{PAPERS[method]}: paper settings used"]
    w = max(len(k) for k in settings)
    for k, s in settings.items():
        lines.append(f"  {k:<{w}}  {_fmt_value(s.value):<34} [{s.source}]")
    return "\n".join(lines)


def ratios(res: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The ``ratios`` block: in each method, every measured row's mAP over the method's
    first measured row (its reference), with the paper's ratio of the same rows."""
    out: Dict[str, Dict[str, Any]] = {}
    for method, r in (res.get("methods") or {}).items():
        meas = r.get("measured") or {}
        rows = (r.get("table") or {}).get("rows") or {}
        base = next(iter(meas), None)
        if base is None or not meas[base].get("mAP"):
            continue
        col = (r.get("table") or {}).get("columns", ["mAP"]).index("mAP") \
            if r.get("table") else 0
        for label, m in meas.items():
            if label == base or m.get("mAP") is None:
                continue
            note = ""
            pb, pc = rows.get(base), rows.get(label)
            if pb and pc and pb[col] and pc[col]:
                note = f"; paper: {pc[col] / pb[col]:.3f}"
            out[f"{method}: measured mAP ratio {label} / {base}"] = score_ratio(
                m["mAP"], meas[base]["mAP"], f"{base} (measured)", f"{label} (measured)",
                note=note)
    return out


# ============================================================================ main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", required=True, choices=list(METHODS) + ["all"],
                    help="the paper to reproduce ('all': every method with a table for the "
                         "dataset)")
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--root", required=True, help="dataset folder")
    ap.add_argument("--train-file", help="COCO: training instances json (default "
                    "annotations/instances_train2014.json); VOC: split name (trainval)")
    ap.add_argument("--test-file", help="COCO: test instances json (default "
                    "annotations/instances_val2014.json); VOC: split name (test)")
    ap.add_argument("--rows", nargs="+", help="row keys of the method (see ROWS), 'default' "
                    "or 'all'")
    ap.add_argument("--backbone", help="image backbone (default: the paper's)")
    ap.add_argument("--backbone-weights", help="local ImageNet weights file of the backbone "
                    "(nothing is downloaded); default: random initialisation (a deviation)")
    ap.add_argument("--label-embeddings", help="embeddings spec (default: the GloVe vectors of "
                    "the ML-GCN release in <data>/embeddings; NUS-WIDE: give glove:PATH)")
    ap.add_argument("--image-size", type=int, help="input side (default: the paper's 448)")
    ap.add_argument("--epochs", type=int, help="default: the paper's")
    ap.add_argument("--batch-size", type=int, help="default: the paper's (32 where none is "
                    "given)")
    ap.add_argument("--num-train", type=int, help="train on a seeded random subset of N images")
    ap.add_argument("--num-test", type=int, help="evaluate on a seeded random subset of N images")
    ap.add_argument("--model-opt", action="append", metavar="[MODEL.]KEY=VALUE",
                    help="override a model option of every row whose model takes it (or of "
                         "MODEL's rows only), e.g. gm_mlic.conv_channels=[64,32]; listed as a "
                         "deviation")
    ap.add_argument("--detector", default="torchvision",
                    choices=["torchvision", "detectron2", "precomputed", "groundtruth"],
                    help="region backend of IA-GCN / GM-MLIC (default: torchvision's Faster "
                         "R-CNN R50-FPN, the papers' architecture)")
    ap.add_argument("--detector-weights", help="local Faster R-CNN weights file (default: "
                    "random initialisation, a deviation)")
    ap.add_argument("--detector-trained-on", choices=["coco-train2017", "coco-train2014",
                                                      "no-coco"],
                    help="what the detector weights were trained on (default: taken to be "
                         "COCO train2017, the public weights); coco-train2014 or no-coco "
                         "removes the detector-leakage warning on COCO")
    ap.add_argument("--detector-size", type=int, help="detector input: shorter side in px "
                    "(default: the backend's 800, longer side <= 1333)")
    ap.add_argument("--detector-opt", action="append", metavar="KEY=VALUE",
                    help="another region-backend argument, e.g. path=DIR (precomputed)")
    ap.add_argument("--region-cache", help="folder of the ROI cache (default: "
                    "$PYG_MLIC_CACHE/regions or ~/.cache/pyg_mlic/regions)")
    ap.add_argument("--device", help="cuda, cpu ... (default: cuda when available)")
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--out", default="runs/reproduce")
    ap.add_argument("--no-checkpoint", action="store_true", help="write no checkpoints")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/<method>_<row>/")
    ap.add_argument("--json", help="write paper + measured numbers here")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def methods_for(args: argparse.Namespace) -> List[str]:
    if args.method != "all":
        return [args.method]
    if args.rows and list(args.rows) not in (["default"], ["all"]):
        raise SystemExit("--method all takes --rows default or --rows all only")
    return [m for m in METHODS if args.dataset in PAPER_TABLES[m]]


def check_embeddings(methods: Sequence[str], args: argparse.Namespace) -> None:
    """Fail before any work when a row needs word embeddings and none are at hand."""
    if args.label_embeddings or default_embeddings(args.dataset):
        return
    for method in methods:
        for key in resolve_rows(method, args.rows):
            row = ROWS[method][key]
            emb = row_settings(method, row, args.dataset)[0].get("label_embeddings")
            if row.model != "iml_gcn" and emb is not None and emb.value == "glove300":
                raise SystemExit(f"{method}: no label embeddings for {args.dataset}: pass "
                                 "--label-embeddings glove:PATH (the paper uses 300-d GloVe) "
                                 "or --label-embeddings onehot (a deviation)")


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Train and evaluate every selected method; the JSON-able results."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    methods = methods_for(args)
    for m in methods:
        resolve_rows(m, args.rows)  # bad row names fail before any work
    check_embeddings(methods, args)
    train, test = load_splits(args)
    print(f"{args.dataset}: {len(train)} training images ({train.split}), {len(test)} test "
          f"images ({test.split}), {len(train.classes)} classes", flush=True)
    out_root = Path(args.out)
    region_sets: Dict[Tuple, Tuple] = {}
    results: Dict[str, Any] = {}
    for method in methods:
        settings, _ = paper_settings(method, args.dataset)
        print("\n" + format_settings(method, settings), flush=True)
        r = run_method(method, args, train, test, region_sets, out_root)
        r.update(num_train=len(train), num_test=len(test))
        print(format_report(r), flush=True)
        results[method] = r
    return {"dataset": args.dataset, "methods": results, "classes": list(train.classes),
            "num_train": len(train), "num_test": len(test), "machine": machine(),
            "command_settings": {k: v for k, v in vars(args).items() if k != "json"}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    args = build_parser().parse_args(argv)
    if args.resume and args.no_checkpoint:
        raise SystemExit("--resume needs checkpoints (drop --no-checkpoint)")
    if args.detector_trained_on and not (args.detector_weights or
                                         args.detector == "precomputed"):
        raise SystemExit("--detector-trained-on describes --detector-weights (or precomputed "
                         "regions); give those too")
    res = run(args)
    block = ratios(res)
    if block:
        print("\nmeasured mAP ratios (same run):")
        for k, r in block.items():
            print(f"  {k}: {r['value']:.3f} {r['meaning']}")
    if args.json:
        write_results(res, block, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
