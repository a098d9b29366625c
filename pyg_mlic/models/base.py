"""What every pyg_mlic model shares: the output type, the base class and the encoder.

A model maps a collated batch (see :mod:`pyg_mlic.data.base`) to a
:class:`ModelOutput`: logits ``[B, C]`` plus named auxiliary losses (A-GCN's sparse
correlation constraint, IA-GCN's KL term, ...). The engine minimises

.. math::
    \\mathcal{L} = \\mathcal{L}_{cls}(\\hat{y}, y) + \\sum_k \\mathcal{L}_k^{aux}

where :math:`\\mathcal{L}_{cls}` is :meth:`MultiLabelModel.classification_loss`
(masked binary cross-entropy, ML-GCN Eq. 5, unless a model overrides it) and the
auxiliary terms are already weighted by the model (their weights are model options).
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from pyg_mlic.utils.debug import DEBUG_ENV, debug_checks  # noqa: F401  (re-exported)

Batch = Dict[str, Any]


@dataclass
class ModelOutput:
    """Output of every model.

    Attributes:
        logits (Tensor): ``[B, C]`` class scores before the sigmoid.
        aux_losses (dict): named, already weighted auxiliary loss terms (scalars).
        extras (dict): anything a model wants to expose for analysis (e.g. the
            image features ``"features"`` ``[B, D]`` or a learned graph).
    """

    logits: Tensor
    aux_losses: Dict[str, Tensor] = field(default_factory=dict)
    extras: Dict[str, Any] = field(default_factory=dict)


class MultiLabelModel(nn.Module):
    """Base class of pyg_mlic models.

    Subclasses set ``self.encoder`` (images or features → ``[B, D]``) and implement
    :meth:`forward`. The arguments a model is built with are recorded here, once for all
    models, in ``self.build_kwargs`` (what a checkpoint stores to rebuild the model with
    :func:`pyg_mlic.models.build_model`): every constructor argument (defaults filled in,
    tuples as lists) except :attr:`unsaved_arguments`, overridden by the values a model
    *resolves* from them during construction and reports with :meth:`record_resolved`
    (e.g. the label graph computed from ``train_labels``, so a reload needs no data).
    A registered class knows its registry name (``model_name``), so a model built
    directly reloads from its checkpoint too.

    The engine gives the parameters of ``self.encoder.backbone`` (when the encoder
    has one) the backbone learning rate and every other parameter the head learning
    rate (the papers train the pretrained CNN with a smaller rate).
    """

    model_name: str = "?"
    #: training defaults from the paper (see :class:`pyg_mlic.engine.TrainConfig`)
    default_train_config: Dict[str, Any] = {}
    #: the model reads per-image detector regions (``roi_*`` / ``boxes``), so that
    #: batch-level input blends (mixup, :mod:`pyg_mlic.engine.mixup`) are refused
    reads_regions: bool = False
    #: constructor arguments a checkpoint does not store: data turned into buffers during
    #: construction (recorded through :meth:`record_resolved`) and files whose content is
    #: in the state dict
    unsaved_arguments: Tuple[str, ...] = ("train_labels", "train_label_mask", "label_graph",
                                          "backbone_weights", "label_embeddings_spec")

    def __init__(self, classes: Sequence[str]):
        super().__init__()
        self.classes: List[str] = [str(c) for c in classes]
        self.build_kwargs: Dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_arguments", False):
            return
        sig = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self, *args: Any, **kw: Any) -> None:
            # every level of a super().__init__ chain binds its own arguments (so defaults
            # of a parent reached through **kwargs are recorded too); the outermost level's
            # values win and it writes build_kwargs
            outermost = "_resolved_arguments" not in self.__dict__
            if outermost:
                self.__dict__["_resolved_arguments"] = {}
                self.__dict__["_bound_arguments"] = {}
            try:
                init(self, *args, **kw)
                self.__dict__["_bound_arguments"].update(_bound_arguments(sig, self, args, kw))
                if outermost:
                    unsaved = type(self).unsaved_arguments
                    recorded = {k: _plain_argument(v) for k, v in
                                self.__dict__["_bound_arguments"].items() if k not in unsaved}
                    recorded["classes"] = list(self.classes)
                    recorded.update(self.__dict__["_resolved_arguments"])
                    self.build_kwargs = recorded
            finally:
                if outermost:
                    del self.__dict__["_resolved_arguments"]
                    del self.__dict__["_bound_arguments"]

        __init__._records_arguments = True  # type: ignore[attr-defined]
        cls.__init__ = __init__  # type: ignore[method-assign]

    def record_resolved(self, **values: Any) -> None:
        """Record values resolved during construction (a computed label graph, the
        embedding matrix a spec named, a width derived from the backbone) in place of the
        arguments they came from in ``build_kwargs``."""
        store = self.__dict__.get("_resolved_arguments")
        if store is None:  # called after construction: update directly
            self.build_kwargs.update(values)
        else:
            store.update(values)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def encode(self, batch: Batch) -> Tensor:
        """Image-level features ``[B, D]`` of a batch (images or precomputed features).

        The inputs' finiteness is checked at the data boundary (the engine checks every
        batch on the host); here only with :func:`debug_checks` on."""
        if debug_checks():
            from pyg_mlic.data.base import check_batch_finite

            check_batch_finite(batch)
        return self.encoder(batch["features"] if "features" in batch else batch["image"])

    def classification_loss(self, logits: Tensor, target: Tensor,
                            mask: Optional[Tensor] = None) -> Tensor:
        """Masked binary cross-entropy (ML-GCN Eq. 5), averaged over unmasked entries."""
        loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
        if mask is None:
            return loss.mean()
        m = mask.to(loss.dtype)
        return (loss * m).sum() / m.sum().clamp_min(1.0)

    def loss(self, out: ModelOutput, batch: Batch) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Total loss and its named parts (detached 0-d tensors, for logging: the engine
        turns them into numbers once per epoch, so that a GPU step does not wait on them)."""
        cls = self.classification_loss(out.logits, batch["target"], batch.get("mask"))
        total = cls
        parts = {"cls": cls.detach()}
        for name, value in out.aux_losses.items():
            total = total + value
            parts[name] = value.detach()
        return total, parts

    def parameter_groups(self) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
        """``(backbone_params, head_params)`` for per-group learning rates."""
        bb = getattr(self.encoder, "backbone", None) if hasattr(self, "encoder") else None
        bb_ids = {id(p) for p in bb.parameters()} if bb is not None else set()
        backbone = [p for p in self.parameters() if id(p) in bb_ids and p.requires_grad]
        head = [p for p in self.parameters() if id(p) not in bb_ids and p.requires_grad]
        return backbone, head

    def forward(self, batch: Batch) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def export_module(self) -> nn.Module:
        """A plain module ``input -> logits`` for deployment (see :mod:`pyg_mlic.export`).

        Models with static classifiers return a
        :class:`~pyg_mlic.export.FrozenClassifier`; others raise."""
        raise NotImplementedError(
            f"{self.model_name}: classifiers depend on the image, so the model cannot be "
            "frozen into backbone + one linear layer")

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


def _plain_argument(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain_argument(v) for v in value]
    if isinstance(value, list):
        return [_plain_argument(v) for v in value]
    return value


def _bound_arguments(sig: inspect.Signature, model: "MultiLabelModel", args: tuple,
                     kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """One constructor's arguments as called: defaults filled in, ``**kwargs`` flattened."""
    bound = sig.bind(model, *args, **kwargs)
    bound.apply_defaults()
    out: Dict[str, Any] = {}
    for name, value in bound.arguments.items():
        param = sig.parameters[name]
        if name == "self" or param.kind is param.VAR_POSITIONAL:
            continue
        if param.kind is param.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


def build_encoder(input_kind: str = "image", *, backbone: str = "resnet101",
                  backbone_weights: Optional[str] = None, pool: str = "max",
                  in_features: Optional[int] = None,
                  encoder_hidden: Sequence[int] = (512,), encoder_out: int = 512,
                  encoder_dropout: float = 0.0, input_dropout: float = 0.0,
                  input_std_floor: float = 0.0, input_clip: Optional[float] = None
                  ) -> nn.Module:
    r"""The image encoder (backbone + global pooling) or, for feature datasets, an MLP.

    Feature datasets get a :class:`~pyg_mlic.backbones.MLPEncoder` that standardises its
    input with the training split's statistics (the identity until
    :func:`pyg_mlic.engine.fit` sets them; saved in the state dict).

    Args:
        input_kind (str): ``"image"`` or ``"features"`` (see the dataset protocol).
        backbone (str): a name from :func:`pyg_mlic.backbones.list_backbones`.
        backbone_weights (str, optional): local weights file (or ``"imagenet"`` where
            the weights ship offline), ``None`` = random init.
        pool (str): ``"max"`` (ML-GCN Eq. 3, :math:`f_{GMP}`) or ``"avg"`` (:math:`f_{GAP}`).
        in_features (int, optional): input size for ``input_kind="features"``.
        encoder_hidden, encoder_out: hidden widths and output size of the features MLP.
        encoder_dropout, input_dropout (float): features MLP dropout after each hidden
            layer / on the input (``fit``'s features recipe sets 0.5 / 0.2 unless the
            model options give them). (default: :obj:`0.0`)
        input_std_floor (float): the floor :math:`\alpha` of the input standardisation
            (:class:`~pyg_mlic.backbones.MLPEncoder` ``std_floor``: no feature's
            :math:`\sigma_j` below :math:`\alpha` times the median one). (default:
            :obj:`0.0`)
        input_clip (float, optional): clip the standardised features to
            :math:`[-c, c]` (:class:`~pyg_mlic.backbones.MLPEncoder` ``clip``; ``fit``'s
            features recipe sets 2 unless the model options give it). (default:
            :obj:`None`)
    Returns:
        a module mapping the batch input to ``[B, D]`` with attribute ``out_channels``.
    """
    from pyg_mlic import backbones as B

    if input_kind == "features":
        if not in_features:
            raise ValueError("input_kind='features' needs in_features (the feature dimension)")
        return B.MLPEncoder(int(in_features), hidden=encoder_hidden,
                            out_features=int(encoder_out), dropout=float(encoder_dropout),
                            input_dropout=float(input_dropout), standardize=True,
                            std_floor=input_std_floor, clip=input_clip)
    if input_kind != "image":
        raise ValueError(f"input_kind must be 'image' or 'features', got {input_kind!r}")
    pools = {"max": B.GlobalMaxPool2d, "avg": B.GlobalAvgPool2d}
    if pool not in pools:
        raise ValueError(f"pool must be one of {sorted(pools)}, got {pool!r}")
    return B.ImageEncoder(B.build_backbone(backbone, weights=backbone_weights), pools[pool]())
