"""ML-GCN (Chen et al., *Multi-Label Image Recognition with Graph Convolutional
Networks*, CVPR 2019)."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from pyg_mlic.errors import ClassMismatchError, check_same_classes
from pyg_mlic.models.base import Batch, ModelOutput, MultiLabelModel, build_encoder
from pyg_mlic.models.registry import register_ablation, register_demo_row, register_model
from pyg_mlic.nn.label_gcn_conv import LabelGCNConv
from pyg_mlic.utils.registry import Registry


def resolve_label_graph(classes: Sequence[str], *, label_graph: Any = None,
                        train_labels: Any = None, graph_edge_index: Optional[Tensor] = None,
                        graph_edge_weight: Optional[Tensor] = None, tau: float = 0.4,
                        p: float = 0.2, scheme: str = "reweighted",
                        convention: str = "paper", train_label_mask: Any = None):
    """``(edge_index, edge_weight)`` of the label graph a model propagates over.

    Precedence: explicit edges (a checkpoint) > ``label_graph`` (a
    :class:`~pyg_mlic.graphs.LabelGraph` or its ``Data``) > statistics of
    ``train_labels`` (``[N, C]`` 0/1, training split only) with ``train_label_mask``
    (bool ``[N, C]``, False = unknown: only pairs of known entries are counted, see
    :func:`pyg_mlic.graphs.cooccurrence`; ``None``: every entry is known).
    """
    if graph_edge_index is not None:
        return graph_edge_index.long(), graph_edge_weight.float()
    if label_graph is not None:
        data = getattr(label_graph, "data", label_graph)
        if getattr(data, "classes", None) is not None:
            check_same_classes("model", classes, "label graph", data.classes)
        elif data.num_nodes != len(classes):
            raise ClassMismatchError(f"label graph has {data.num_nodes} nodes, model has "
                                     f"{len(classes)} classes")
        return data.edge_index.long(), data.edge_weight.float()
    if train_labels is None:
        raise ValueError("ML-GCN needs the training labels (train_labels=[N, C]) or a "
                         "label_graph to build its correlation matrix")
    from pyg_mlic.graphs import LabelGraph

    g = LabelGraph.from_labels(train_labels, classes=list(classes), tau=tau, p=p, scheme=scheme,
                               convention=convention, split="train", mask=train_label_mask)
    return g.data.edge_index.long(), g.data.edge_weight.float()


def resolve_label_embeddings(classes: Sequence[str], label_embeddings: Any) -> Tensor:
    """Label embeddings ``[C, d]``: a tensor/array, a spec string for
    :func:`pyg_mlic.embeddings.load_label_embeddings`, or ``None`` (one-hot)."""
    if label_embeddings is None:
        return torch.eye(len(classes))
    if isinstance(label_embeddings, str):
        from pyg_mlic.embeddings import load_label_embeddings

        return load_label_embeddings(label_embeddings, list(classes))
    E = torch.as_tensor(label_embeddings, dtype=torch.float32)
    if E.dim() != 2 or E.size(0) != len(classes):
        raise ClassMismatchError(f"label embeddings have shape {tuple(E.shape)}, expected "
                                 f"[{len(classes)}, d] (one row per class)")
    if not torch.isfinite(E).all():
        bad = (~torch.isfinite(E)).any(1).nonzero().flatten().tolist()
        raise ValueError(f"non-finite label embeddings for classes {[classes[i] for i in bad]}")
    return E


#: ``name -> (layer class or factory, default keyword arguments)`` of the label-graph layers
#: :class:`ClassifierGCN` (and so ``ml_gcn``'s ``conv=`` option) accepts by name.
#: Names are case-insensitive; :func:`register_label_conv` adds one.
LABEL_CONVS: Registry[Tuple[Callable[..., nn.Module], Dict[str, Any]]] = Registry(
    "conv", normalize=str.lower, identity=lambda entry: entry[0])


def register_label_conv(name: str, factory: Callable[..., nn.Module], **defaults: Any) -> None:
    """Make ``factory(in_channels, out_channels, **kwargs)`` available as ``conv=name``.

    Registered names are what a checkpoint stores, so a custom layer registered under a
    name (before the checkpoint is loaded) rebuilds anywhere.

    Args:
        name (str): the name used in ``conv=name`` (case-insensitive).
        factory (callable): a layer class or function ``(in, out, **kw) -> nn.Module``.
        **defaults: keyword arguments always passed to ``factory`` (``conv_kwargs``
            override them).
    """
    LABEL_CONVS.register(name, (factory, dict(defaults)))


def _register_builtin_convs() -> None:
    from torch_geometric import nn as pyg_nn

    register_label_conv("gcn", LabelGCNConv)
    # PyG layers: edge weights reach those with an ``edge_weight`` argument; GAT/GATv2/
    # Transformer take them as a 1-d ``edge_attr`` (edge_dim=1) entering the attention.
    register_label_conv("gcnconv", pyg_nn.GCNConv)
    register_label_conv("graphconv", pyg_nn.GraphConv)
    register_label_conv("gat", pyg_nn.GATConv, edge_dim=1)
    register_label_conv("gatv2", pyg_nn.GATv2Conv, edge_dim=1)
    register_label_conv("transformer", pyg_nn.TransformerConv, edge_dim=1)
    register_label_conv("sage", pyg_nn.SAGEConv)
    register_label_conv("cheb", pyg_nn.ChebConv, K=2)


_register_builtin_convs()


def _import_string(spec: str) -> Any:
    mod_name, _, attr = spec.partition(":")
    try:
        import importlib

        obj: Any = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"conv={spec!r}: cannot import {attr!r} from module {mod_name!r} "
                         f"({e}); use a registered name {LABEL_CONVS.names()} or "
                         "'package.module:ClassName'") from e
    return obj


def resolve_label_conv(conv: Any = None) -> Tuple[Callable[..., nn.Module], Dict[str, Any], str]:
    """``(factory, default kwargs, spec)`` of a ``conv=`` option.

    ``conv`` is ``None``/``"gcn"`` (:class:`~pyg_mlic.nn.LabelGCNConv`), a registered name
    (:data:`LABEL_CONVS`: ``"gat"``, ``"gcnconv"``, ``"sage"`` ...), an import string
    ``"package.module:ClassName"``, or a class/function ``(in, out, **kw) -> nn.Module``.
    ``spec`` is the JSON-able string stored in checkpoints: the registered name, or the
    import string of a class/function defined at module level. A lambda or a class defined
    inside a function cannot be re-imported; its spec starts with ``"unimportable:"`` and
    rebuilding from such a checkpoint raises (register it with :func:`register_label_conv`).
    """
    if conv is None:
        conv = "gcn"
    if isinstance(conv, str):
        if conv.startswith("unimportable:"):
            raise ValueError(f"conv={conv!r}: the model was built with a layer factory that "
                             "cannot be re-imported (a lambda or a local class); register it "
                             "with pyg_mlic.models.ml_gcn.register_label_conv(name, factory) "
                             "and build with conv=name")
        if conv in LABEL_CONVS:
            f, d = LABEL_CONVS.get(conv)
            return f, d, LABEL_CONVS.key(conv)
        if ":" in conv:
            return _import_string(conv), {}, conv
        raise LABEL_CONVS.unknown(conv, also=", or pass 'package.module:ClassName'")
    if not callable(conv):
        raise TypeError(f"conv must be a name, an import string or a callable, got "
                        f"{type(conv).__name__}")
    for name, (f, d) in LABEL_CONVS.items():
        if f is conv and not d:
            return f, {}, name
    mod, qual = getattr(conv, "__module__", None), getattr(conv, "__qualname__", "")
    spec = f"{mod}:{qual}"
    if not mod or "<" in qual:
        spec = f"unimportable:{mod}:{qual}"
    return conv, {}, spec


def _edge_weight_mode(layer: nn.Module) -> str:
    """How a layer receives the label graph's edge weights: ``"edge_weight"``,
    ``"edge_attr"`` (as ``[E, 1]``, when the layer has ``edge_dim`` set) or ``"none"``."""
    params = inspect.signature(layer.forward).parameters
    if "edge_weight" in params:
        return "edge_weight"
    if "edge_attr" in params and getattr(layer, "edge_dim", None):
        return "edge_attr"
    return "none"


def default_gcn_hidden(out_channels: int) -> List[int]:
    """Hidden width of a classifier GCN for image features of size :math:`D`: ``[D // 2]``.

    ML-GCN uses 1024 → 2048 for ResNet-101 (:math:`D = 2048`), i.e. :math:`D/2`. Scaling
    with :math:`D` keeps that shape for smaller backbones; a fixed 1024 in front of a
    128-d backbone multiplies Adam's effective step on the classifiers: in the demo
    setting (small_cnn, :math:`D = 128`, 5 epochs) ML-GCN reached test mAP 43.0 with
    ``[1024]`` and 69.2 with ``[64]`` (the baseline: 69.2), measured on the synthetic
    scenes.
    """
    return [max(1, int(out_channels) // 2)]


class ClassifierGCN(nn.Module):
    r"""Stacked label-graph layers (by default :class:`~pyg_mlic.nn.LabelGCNConv`)
    mapping label embeddings :math:`\mathbf{Z} \in \mathbb{R}^{C \times d}` to classifiers
    :math:`\mathbf{W} \in \mathbb{R}^{C \times D}` (ML-GCN Sec. 3.3, Eq. 2):

    .. math::
        \mathbf{H}^{l+1} = h(\mathbf{P} \mathbf{H}^{l} \mathbf{W}^{l}),\quad
        \mathbf{H}^0 = \mathbf{Z},\quad \mathbf{W} = \mathbf{H}^{L}

    with :math:`h` = LeakyReLU between layers and no activation after the last.

    Another PyG layer replaces :math:`\mathbf{P}\mathbf{H}\mathbf{W}` with ``conv=``.
    The graph's edge weights :math:`p_{ij}` are passed as ``edge_weight`` to layers whose
    ``forward`` takes one (``LabelGCNConv``, ``GCNConv``, ``GraphConv``, ``ChebConv``), as a
    1-d ``edge_attr`` ``[E, 1]`` to layers built with ``edge_dim`` (``"gat"`` registers
    ``GATConv(edge_dim=1)``: the weights enter the attention logits), and are otherwise
    ignored (``SAGEConv``: only the graph's edges are used). Note that PyG's ``GCNConv``
    and ``GATConv`` add self-loops and normalise themselves, unlike ``LabelGCNConv``,
    which applies :math:`\mathbf{P}` as given.

    Args:
        in_channels (int): embedding size :math:`d`.
        hidden (list[int]): widths of the hidden layers (``[1024]`` = ML-GCN's 2 layers).
        out_channels (int): classifier size :math:`D` (the image feature size).
        negative_slope (float): LeakyReLU slope. (default: :obj:`0.2`)
        conv (str or callable, optional): the layer: a name registered in
            :data:`LABEL_CONVS` (``"gcn"``, ``"gat"``, ``"gatv2"``, ``"gcnconv"``,
            ``"graphconv"``, ``"sage"``, ``"transformer"``, ``"cheb"``), an import string
            ``"package.module:ClassName"``, or a factory ``conv(in, out, **conv_kwargs)``
            returning a module with ``forward(x, edge_index, ...)``.
            (default: :obj:`None` = ``"gcn"`` = :class:`LabelGCNConv`)
        conv_kwargs (dict, optional): extra keyword arguments of every layer (e.g.
            ``{"heads": 2, "concat": False}`` for GAT).

    Shapes:
        - **input:** label features :math:`(C, d)`, edge indices :math:`(2, E)`,
          edge weights :math:`(E)`
        - **output:** classifiers :math:`(C, D)`
    """

    def __init__(self, in_channels: int, hidden: Sequence[int], out_channels: int,
                 negative_slope: float = 0.2, conv: Any = None,
                 conv_kwargs: Optional[Dict[str, Any]] = None):
        super().__init__()
        factory, defaults, self.conv_spec = resolve_label_conv(conv)
        kw = {**defaults, **(conv_kwargs or {})}
        dims = [in_channels, *hidden, out_channels]
        self.convs = nn.ModuleList(factory(a, b, **kw) for a, b in zip(dims[:-1], dims[1:]))
        self._modes = [_edge_weight_mode(c) for c in self.convs]
        self.act = nn.LeakyReLU(negative_slope)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor) -> Tensor:
        for i, (conv, mode) in enumerate(zip(self.convs, self._modes)):
            if mode == "edge_weight":
                x = conv(x, edge_index, edge_weight=edge_weight)
            elif mode == "edge_attr":
                x = conv(x, edge_index, edge_attr=edge_weight.view(-1, 1))
            else:
                x = conv(x, edge_index)
            if i < len(self.convs) - 1:
                x = self.act(x)
        return x


@register_model("ml_gcn")
class MLGCN(MultiLabelModel):
    r"""ML-GCN: classifiers generated by a GCN over the label graph (Eqs. 2–4).

    .. math::
        \mathbf{x} = f_{GMP}(f_{cnn}(I)) \in \mathbb{R}^{D},\qquad
        \mathbf{W} = \mathrm{GCN}(\mathbf{Z}, \mathbf{P}) \in \mathbb{R}^{C \times D},\qquad
        \hat{\mathbf{y}} = \mathbf{W}\mathbf{x}

    The classifiers are generated once per forward pass (not per image); in eval mode
    they are cached, and the cache is dropped on :meth:`train` or when a parameter
    changes.

    Args:
        classes (list[str]): class names.
        input_kind (str): ``"image"`` or ``"features"``.
        backbone (str): image backbone. (default: :obj:`"resnet101"`)
        train_labels: ``[N, C]`` 0/1 training labels (statistics for the graph).
        train_label_mask: bool ``[N, C]`` known-mask of ``train_labels`` (False = unknown,
            left out of the statistics), or ``None``.
        label_graph: a prebuilt :class:`~pyg_mlic.graphs.LabelGraph` (overrides ``train_labels``).
        label_embeddings: ``[C, d]`` tensor, an embeddings spec, or ``None`` (one-hot).
        tau (float): binarisation threshold (Eq. 7). (default: :obj:`0.4`)
        p (float): re-weighting (Eq. 8). (default: :obj:`0.2`)
        scheme (str): ``"reweighted"``, ``"binary"`` or ``"probability"``.
        convention (str): ``"paper"`` or ``"mlgcn_code"`` (see :class:`LabelGraph`).
        gcn_hidden (list[int], optional): hidden widths; the last layer's width is the
            image feature size ``D``. ML-GCN: ``[1024]`` (2 layers, 1024 → 2048 with
            ResNet-101); Table 3: ``[1024, 1024]`` and ``[1024, 1024, 1024]``.
            (default: ``[D // 2]``, see :func:`default_gcn_hidden`)
        negative_slope (float): LeakyReLU slope. (default: :obj:`0.2`)
        bias (bool): add a learnable per-class bias to the logits,
            :math:`\hat{\mathbf{y}} = \mathbf{W}\mathbf{x} + \mathbf{b}`. Eq. 4 and the
            public code have none; with a backbone trained from scratch (as in the demo) it
            absorbs the label priors. (default: :obj:`False`)
        conv (str or callable): the label-graph layer (see :class:`ClassifierGCN`):
            ``"gcn"`` (ML-GCN's :class:`~pyg_mlic.nn.LabelGCNConv`), another registered
            PyG layer (``"gat"`` ...), ``"package.module:ClassName"`` or a factory.
            Stored in checkpoints by name / import string. (default: :obj:`"gcn"`)
        conv_kwargs (dict, optional): extra keyword arguments of every layer.
        encoder_hidden, encoder_out, encoder_dropout, input_dropout, input_std_floor, input_clip:
            the MLP of feature datasets (see :func:`~pyg_mlic.models.build_encoder`;
            ``fit``'s features recipe sets the dropouts to 0.5 / 0.2 and the clipping to 2
            unless given).
    """

    default_train_config = dict(optimizer="sgd", lr=0.01, backbone_lr=0.001, momentum=0.9,
                                weight_decay=1e-4, lr_step=40, lr_gamma=0.1, epochs=100)

    def __init__(self, classes: Sequence[str], input_kind: str = "image",
                 backbone: str = "resnet101", backbone_weights: Optional[str] = None,
                 pool: str = "max", in_features: Optional[int] = None,
                 train_labels: Any = None, label_graph: Any = None, label_embeddings: Any = None,
                 tau: float = 0.4, p: float = 0.2, scheme: str = "reweighted",
                 convention: str = "paper", gcn_hidden: Optional[Sequence[int]] = None,
                 negative_slope: float = 0.2, bias: bool = False,
                 encoder_hidden: Sequence[int] = (512,),
                 encoder_out: int = 512, graph_edge_index: Optional[Tensor] = None,
                 graph_edge_weight: Optional[Tensor] = None, conv: Any = "gcn",
                 conv_kwargs: Optional[Dict[str, Any]] = None, train_label_mask: Any = None,
                 encoder_dropout: float = 0.0, input_dropout: float = 0.0,
                 input_std_floor: float = 0.0, input_clip: Optional[float] = None):
        super().__init__(classes)
        self.encoder = build_encoder(input_kind, backbone=backbone,
                                     backbone_weights=backbone_weights, pool=pool,
                                     in_features=in_features, encoder_hidden=encoder_hidden,
                                     encoder_out=encoder_out, encoder_dropout=encoder_dropout,
                                     input_dropout=input_dropout,
                                     input_std_floor=input_std_floor,
                                     input_clip=input_clip)
        ei, ew = resolve_label_graph(self.classes, label_graph=label_graph,
                                     train_labels=train_labels, graph_edge_index=graph_edge_index,
                                     graph_edge_weight=graph_edge_weight, tau=tau, p=p,
                                     scheme=scheme, convention=convention,
                                     train_label_mask=train_label_mask)
        E = resolve_label_embeddings(self.classes, label_embeddings)
        self.register_buffer("edge_index", ei, persistent=True)
        self.register_buffer("edge_weight", ew, persistent=True)
        self.register_buffer("label_embeddings", E, persistent=True)
        if gcn_hidden is None:
            gcn_hidden = default_gcn_hidden(self.encoder.out_channels)
        self.gcn = ClassifierGCN(E.size(1), list(gcn_hidden), self.encoder.out_channels,
                                 negative_slope, conv=conv, conv_kwargs=conv_kwargs)
        self.bias = nn.Parameter(torch.zeros(self.num_classes)) if bias else None
        self._cache: Optional[tuple] = None
        self.record_resolved(gcn_hidden=list(gcn_hidden), graph_edge_index=ei,
                             graph_edge_weight=ew, label_embeddings=E,
                             conv=self.gcn.conv_spec, conv_kwargs=dict(conv_kwargs or {}))

    def _cache_key(self) -> tuple:
        ts = list(self.gcn.parameters()) + [self.edge_index, self.edge_weight,
                                            self.label_embeddings]
        return tuple((t.data_ptr(), t._version) for t in ts)

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def classifiers(self) -> Tensor:
        """The generated classifiers :math:`\\mathbf{W}` ``[C, D]`` (Eq. 4's W)."""
        if not self.training and self._cache is not None and self._cache[0] == self._cache_key():
            return self._cache[1]
        W = self.gcn(self.label_embeddings, self.edge_index, self.edge_weight)
        if not self.training and not torch.is_grad_enabled():
            self._cache = (self._cache_key(), W)
        return W

    def forward(self, batch: Batch) -> ModelOutput:
        x = self.encode(batch)
        W = self.classifiers()
        logits = x @ W.t()
        if self.bias is not None:
            logits = logits + self.bias
        return ModelOutput(logits, extras={"features": x})

    def export_module(self) -> nn.Module:
        """Backbone + pooling + the generated classifiers frozen into one linear layer."""
        from pyg_mlic.export import FrozenClassifier

        with torch.no_grad():
            W = self.gcn(self.label_embeddings, self.edge_index, self.edge_weight)
        return FrozenClassifier(self.encoder, W, self.bias, self.classes)


# the demo table shows every method at its defaults (ML-GCN: the re-weighted matrix,
# Eq. 8); the binary matrix (Eq. 7), which the paper reports to over-smooth (Sec. 3.4,
# Table 1), is an ablation row beside it
register_demo_row("ml_gcn", "ml_gcn")

_TABLE = "ML-GCN correlation matrices (Table 1)"
register_ablation(_TABLE, "ML-GCN (Binary)", "ml_gcn", scheme="binary")
register_ablation(_TABLE, "ML-GCN (Re-weighted)", "ml_gcn", scheme="reweighted")
