r"""Query2Label (Liu, Zhang, Yang, Su, Zhu, *Query2Label: A Simple Transformer Way to
Multi-Label Classification*, arXiv 2107.10834, 2021) and the attention layers it shares with
ML-Decoder (:mod:`pyg_mlic.models.ml_decoder`).

Query2Label reads the backbone's last feature map as :math:`hw` spatial tokens, lets
:math:`C` learnable **label queries** (one per class) attend to each other
(self-attention) and to the tokens (cross-attention) in a standard transformer decoder,
and classifies each label from its own query with a per-label linear projection. The
label-query self-attention is a learned, image-dependent label graph:
:meth:`Query2Label.label_graph` exports it as a :class:`torch_geometric.data.Data`.

Shared here (one place for the transformer parts of both heads):

* :class:`MultiHeadAttention` — scaled dot-product attention that also returns its
  weights (Vaswani et al., 2017, Sec. 3.2);
* :class:`TransformerLayer` — a post-norm transformer layer with optional self- and
  cross-attention (the decoder layer of Q2L, the encoder layer over the spatial tokens,
  and ML-Decoder's cross-attention-only layer);
* :func:`sine_position_embedding` — the 2-d sinusoidal position code of the tokens;
* :class:`SpatialTokens` — backbone feature map (or a feature vector) to tokens;
* :class:`InputToLogits` — the deployable ``input -> logits`` module of both heads.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyg_mlic.models.base import Batch, ModelOutput, MultiLabelModel, build_encoder, debug_checks
from pyg_mlic.models.iml_gcn import _ASLMixin
from pyg_mlic.models.registry import register_demo_row, register_model

#: valid values of the ``position_embedding`` option
POSITION_EMBEDDINGS = ("sine", "none")


def _check_int(who: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{who}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_dropout(who: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{who}: dropout must be a number in [0, 1), got {value!r}")
    return float(value)


def round_to_multiple(value: float, multiple: int) -> int:
    """``value`` rounded to the nearest positive multiple of ``multiple`` (the embedding
    width of an attention layer must be divisible by its number of heads)."""
    return max(int(multiple), int(round(float(value) / multiple)) * int(multiple))


def default_q2l_widths(in_features: int, heads: int = 4) -> Tuple[int, int]:
    r"""``(hidden_dim, ffn_dim)`` of Query2Label for a backbone of :math:`D` channels:
    :math:`d = D` (rounded to a multiple of ``heads``) and :math:`4d`.

    The paper's ResNet-101 setting is :math:`d = 2048 = D` with a 8192-wide feed-forward
    layer (the authors' training command: ``--hidden_dim 2048 --dim_feedforward 8192``):
    exactly these widths at :math:`D = 2048`. Scaling with :math:`D` keeps that shape
    on small backbones, as :func:`~pyg_mlic.models.ml_gcn.default_gcn_hidden` does for
    ML-GCN (a 2048-wide decoder behind the demo's 128-d CNN would dwarf it)."""
    D = int(in_features)
    if D < 1:
        raise ValueError(f"default_q2l_widths: in_features must be >= 1, got {in_features}")
    d = round_to_multiple(D, heads)
    return d, 4 * d


# --------------------------------------------------------------------------- layers
class MultiHeadAttention(nn.Module):
    r"""Multi-head scaled dot-product attention that returns its weights (Vaswani et
    al., *Attention Is All You Need*, 2017, Sec. 3.2).

    .. math::
        \mathrm{head}_h = \mathbf{A}_h\,\mathbf{V}\mathbf{W}^V_h,\qquad
        \mathbf{A}_h = \mathrm{softmax}\Big(\frac{(\mathbf{Q}\mathbf{W}^Q_h)
        (\mathbf{K}\mathbf{W}^K_h)^\top}{\sqrt{d / H}}\Big),\qquad
        \mathrm{MHA}(\mathbf{Q}, \mathbf{K}, \mathbf{V}) =
        [\mathrm{head}_1, \dots, \mathrm{head}_H]\,\mathbf{W}^O

    Each row of :math:`\mathbf{A}_h` is a distribution over the keys (sums to 1).
    Written out (not :class:`torch.nn.MultiheadAttention`) so the weights are always
    available and the module exports to ONNX as plain matrix products.

    Args:
        embed_dim (int): :math:`d` (divisible by ``heads``).
        heads (int): :math:`H`.
        dropout (float): dropout on the attention weights (training only; the returned
            weights are before dropout). (default: :obj:`0.0`)

    Shapes:
        - **input:** query :math:`(B, L_q, d)`, key and value :math:`(B, L_k, d)`
        - **output:** :math:`(B, L_q, d)` and the weights :math:`(B, H, L_q, L_k)`
    """

    def __init__(self, embed_dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        embed_dim = _check_int("MultiHeadAttention", "embed_dim", embed_dim, 1)
        heads = _check_int("MultiHeadAttention", "heads", heads, 1)
        if embed_dim % heads:
            raise ValueError(f"MultiHeadAttention: embed_dim ({embed_dim}) must be divisible "
                             f"by heads ({heads})")
        self.embed_dim, self.heads = embed_dim, heads
        self.head_dim = embed_dim // heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _split(self, x: Tensor) -> Tensor:
        B, L, _ = x.shape
        return x.reshape(B, L, self.heads, self.head_dim).transpose(1, 2)  # [B, H, L, d/H]

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tuple[Tensor, Tensor]:
        q = self._split(self.q_proj(query))
        k = self._split(self.k_proj(key))
        v = self._split(self.v_proj(value))
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        out = self.dropout(attn) @ v                                   # [B, H, L_q, d/H]
        out = out.transpose(1, 2).reshape(query.size(0), query.size(1), self.embed_dim)
        return self.out_proj(out), attn

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, heads={self.heads}"


class TransformerLayer(nn.Module):
    r"""A post-norm transformer layer with optional self-attention and cross-attention
    (Vaswani et al., 2017; the decoder layer of Query2Label).

    With queries :math:`\mathbf{Q}`, memory (image tokens) :math:`\mathbf{F}` and their
    position codes :math:`\mathbf{P}_Q, \mathbf{P}_F` (added to what is *compared*, not
    to what is *aggregated*: :math:`\tilde{\mathbf{X}} = \mathbf{X} + \mathbf{P}_X`):

    .. math::
        \mathbf{Q}^{(1)} &= \mathrm{LN}\big(\mathbf{Q} + \mathrm{Drop}(
            \mathrm{MHA}(\tilde{\mathbf{Q}}, \tilde{\mathbf{Q}}, \mathbf{Q}))\big)
            &&\text{(self-attention)}\\
        \mathbf{Q}^{(2)} &= \mathrm{LN}\big(\mathbf{Q}^{(1)} + \mathrm{Drop}(
            \mathrm{MHA}(\tilde{\mathbf{Q}}^{(1)}, \tilde{\mathbf{F}}, \mathbf{F}))\big)
            &&\text{(cross-attention)}\\
        \mathbf{Q}' &= \mathrm{LN}\big(\mathbf{Q}^{(2)} + \mathrm{Drop}(
            \mathbf{W}_2\,\mathrm{Drop}(\mathrm{ReLU}(\mathbf{W}_1 \mathbf{Q}^{(2)})))\big)
            &&\text{(feed-forward)}

    ``self_attention=False`` skips the first step (ML-Decoder's layer);
    ``cross_attention=False`` the second (a transformer *encoder* layer over the tokens).

    Args:
        embed_dim (int): :math:`d`.
        heads (int): attention heads.
        ffn_dim (int): hidden width of the feed-forward network.
        dropout (float): dropout of the residual branches and attention weights.
        self_attention (bool): include the self-attention block. (default: :obj:`True`)
        cross_attention (bool): include the cross-attention block. (default: :obj:`True`)

    Shapes:
        - **input:** queries :math:`(B, L, d)`, memory :math:`(B, N, d)` (when
          ``cross_attention``), position codes broadcastable to them
        - **output:** :math:`(B, L, d)` and a dict of attention weights
          (``"self"`` :math:`(B, H, L, L)`, ``"cross"`` :math:`(B, H, L, N)`)
    """

    def __init__(self, embed_dim: int, heads: int, ffn_dim: int, dropout: float = 0.1,
                 self_attention: bool = True, cross_attention: bool = True):
        super().__init__()
        if not (self_attention or cross_attention):
            raise ValueError("TransformerLayer: needs self_attention or cross_attention")
        ffn_dim = _check_int("TransformerLayer", "ffn_dim", ffn_dim, 1)
        dropout = _check_dropout("TransformerLayer", dropout)
        self.self_attn = MultiHeadAttention(embed_dim, heads, dropout) if self_attention \
            else None
        self.norm_self = nn.LayerNorm(embed_dim) if self_attention else None
        self.cross_attn = MultiHeadAttention(embed_dim, heads, dropout) if cross_attention \
            else None
        self.norm_cross = nn.LayerNorm(embed_dim) if cross_attention else None
        self.ffn = nn.Sequential(nn.Linear(embed_dim, ffn_dim), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(ffn_dim, embed_dim))
        self.norm_ffn = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: Tensor, memory: Optional[Tensor] = None,
                query_pos: Optional[Tensor] = None,
                memory_pos: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        attn: Dict[str, Tensor] = {}
        if self.self_attn is not None:
            qk = q if query_pos is None else q + query_pos
            h, attn["self"] = self.self_attn(qk, qk, q)
            q = self.norm_self(q + self.dropout(h))
        if self.cross_attn is not None:
            if memory is None:
                raise ValueError("TransformerLayer with cross-attention needs the memory")
            qq = q if query_pos is None else q + query_pos
            k = memory if memory_pos is None else memory + memory_pos
            h, attn["cross"] = self.cross_attn(qq, k, memory)
            q = self.norm_cross(q + self.dropout(h))
        q = self.norm_ffn(q + self.dropout(self.ffn(q)))
        return q, attn


def sine_position_embedding(height: int, width: int, dim: int,
                            temperature: float = 10000.0,
                            device: Optional[torch.device] = None,
                            dtype: torch.dtype = torch.float32) -> Tensor:
    r"""2-d sinusoidal position code of an :math:`h \times w` grid of tokens (the
    transformer's sinusoidal code applied to each axis, as DETR and Query2Label do).

    With :math:`n = \lfloor d / 4 \rfloor` frequencies :math:`\omega_k = T^{-k/n}`
    and the normalised coordinates :math:`u = 2\pi (y + \frac12)/h`,
    :math:`v = 2\pi (x + \frac12)/w`:

    .. math::
        \mathbf{p}_{y,x} = [\sin(u\omega_k), \cos(u\omega_k), \sin(v\omega_k),
        \cos(v\omega_k)]_{k < n} \in \mathbb{R}^{4n}

    zero-padded to :math:`d` when :math:`4 \nmid d`.

    Returns:
        Tensor: :math:`(h w, d)`, row :math:`y w + x` for token :math:`(y, x)` (the order
        of ``feature_map.flatten(2)``).
    """
    n = dim // 4
    out = torch.zeros(height, width, dim, device=device, dtype=dtype)
    if n == 0:
        return out.reshape(height * width, dim)
    freq = temperature ** (-torch.arange(n, device=device, dtype=dtype) / n)       # [n]
    u = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height * 2 * math.pi
    v = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width * 2 * math.pi
    pu = torch.cat([torch.sin(u[:, None] * freq), torch.cos(u[:, None] * freq)], 1)  # [h, 2n]
    pv = torch.cat([torch.sin(v[:, None] * freq), torch.cos(v[:, None] * freq)], 1)  # [w, 2n]
    out[..., : 2 * n] = pu[:, None, :]
    out[..., 2 * n: 4 * n] = pv[None, :, :]
    return out.reshape(height * width, dim)


class SpatialTokens(nn.Module):
    r"""The image as tokens for a query head: the backbone's last feature map
    :math:`(B, D, h, w)`, flattened to :math:`hw` tokens and embedded to :math:`d`
    (a :math:`1\times 1` convolution, i.e. one linear map per token), or, for feature
    datasets (``input_kind="features"``, no spatial map), the encoder's vector
    :math:`\mathbf{x} \in \mathbb{R}^{D}` split by one learned linear map into
    :math:`T` tokens:

    .. math::
        \mathbf{F} = \phi\big(\mathbf{W}_e\,\mathrm{flatten}(f_{cnn}(I))\big)
        \in \mathbb{R}^{hw \times d}
        \qquad\text{or}\qquad
        \mathbf{F} = \phi\big(\mathrm{reshape}_{T \times d}(\mathbf{W}_t \mathbf{x})\big)
        \in \mathbb{R}^{T \times d}

    with :math:`\phi` = ReLU when ``activation`` (ML-Decoder's embedding) or the identity.
    With :math:`T = 1` every cross-attention weight is 1 (one key): the head still
    learns per-label maps of the image vector but no spatial selection.

    Args:
        encoder (nn.Module): the model's encoder (an
            :class:`~pyg_mlic.backbones.ImageEncoder` with ``feature_map``, or an
            :class:`~pyg_mlic.backbones.MLPEncoder`).
        embed_dim (int): :math:`d`.
        input_kind (str): ``"image"`` or ``"features"``.
        feature_tokens (int): :math:`T` for feature input. (default: :obj:`1`)
        project (bool): embed image tokens with :math:`\mathbf{W}_e` (``False`` needs
            :math:`d = D`; Query2Label's code at :math:`d = D = 2048`). (default: :obj:`True`)
        activation (bool): apply ReLU after the embedding. (default: :obj:`False`)
        position_embedding (str): ``"sine"`` (:func:`sine_position_embedding`, image
            tokens only) or ``"none"``. (default: :obj:`"none"`)

    Shapes:
        - **input:** images :math:`(B, 3, H, W)` or features :math:`(B, F)`
        - **output:** tokens :math:`(B, N, d)`, their position codes :math:`(N, d)` or
          :obj:`None`, and the pooled image vector :math:`(B, D)`
    """

    def __init__(self, encoder: nn.Module, embed_dim: int, input_kind: str = "image",
                 feature_tokens: int = 1, project: bool = True, activation: bool = False,
                 position_embedding: str = "none"):
        super().__init__()
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {list(POSITION_EMBEDDINGS)}, "
                             f"got {position_embedding!r}")
        D = int(encoder.out_channels)
        self.input_kind, self.embed_dim = input_kind, int(embed_dim)
        self.feature_tokens = _check_int("SpatialTokens", "feature_tokens", feature_tokens, 1)
        self.position_embedding = position_embedding
        self.activation = bool(activation)
        if input_kind == "features":
            self.proj: nn.Module = nn.Linear(D, self.feature_tokens * self.embed_dim)
        elif project:
            self.proj = nn.Linear(D, self.embed_dim)
        else:
            if D != self.embed_dim:
                raise ValueError(f"input projection off needs the embedding width to equal the "
                                 f"backbone's channels, got {self.embed_dim} and D = {D}")
            self.proj = nn.Identity()

    def forward(self, encoder: nn.Module, x: Tensor) -> Tuple[Tensor, Optional[Tensor], Tensor]:
        if self.input_kind == "features":
            pooled = encoder(x)                                          # [B, D]
            tokens = self.proj(pooled).reshape(x.size(0), self.feature_tokens, self.embed_dim)
            pos = None
        else:
            fmap = encoder.feature_map(x)                                # [B, D, h, w]
            pooled = encoder.pool(fmap)
            h, w = int(fmap.shape[-2]), int(fmap.shape[-1])
            tokens = self.proj(fmap.flatten(2).transpose(1, 2))          # [B, hw, d]
            pos = sine_position_embedding(h, w, self.embed_dim, device=tokens.device,
                                          dtype=tokens.dtype) \
                if self.position_embedding == "sine" else None
        if self.activation:
            tokens = F.relu(tokens)
        return tokens, pos, pooled


class InputToLogits(nn.Module):
    """The deployable form of a query head: ``input tensor -> logits``, the whole model
    (backbone, tokens, decoder, classifier) in eval mode (see :mod:`pyg_mlic.export`).
    The head's classifiers depend on the image, so nothing is frozen into one linear
    layer; the ONNX graph holds the attention as plain matrix products."""

    def __init__(self, model: "MultiLabelModel"):
        super().__init__()
        self.model = model
        self.classes = list(model.classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.model.logits_from_input(x)


def _batch_input(model: MultiLabelModel, batch: Union[Mapping[str, Any], Tensor]) -> Tensor:
    """The input tensor of a batch (a collated dict with ``image`` or ``features``, or the
    tensor itself), moved to the model's device."""
    if isinstance(batch, Tensor):
        x = batch
    elif isinstance(batch, Mapping):
        key = "features" if "features" in batch else "image"
        if key not in batch:
            raise ValueError(f"{model.model_name}.label_graph: the batch has neither 'image' "
                             f"nor 'features' (keys: {sorted(batch)})")
        x = batch[key]
    else:
        raise TypeError(f"{model.model_name}.label_graph: batch must be a collated batch (dict) "
                        f"or an input tensor, got {type(batch).__name__}")
    dev = next(model.parameters()).device
    return x.to(dev)


def label_graph_data(adj: Tensor, x: Tensor, classes: Sequence[str], **attrs: Any):
    r"""A dense label graph :math:`\mathbf{A}` ``[C, C]`` as a
    :class:`torch_geometric.data.Data` in the library's convention (edge :math:`j \to i`
    carries :math:`A_{ij}`, see :func:`~pyg_mlic.nn.adaptive_label_graph.adjacency_to_edges`;
    zero entries are dropped), with node features ``x``, the dense ``adj``, the class
    names and ``attrs``."""
    from torch_geometric.data import Data

    from pyg_mlic.nn.adaptive_label_graph import adjacency_to_edges

    adj = adj.detach().float().cpu()
    edge_index, edge_weight = adjacency_to_edges(adj)
    data = Data(x=x.detach().float().cpu(), edge_index=edge_index, edge_weight=edge_weight,
                adj=adj, num_nodes=adj.size(0), **attrs)
    data.classes = [str(c) for c in classes]
    return data


# --------------------------------------------------------------------------- the model
@register_model("q2l")
class Query2Label(_ASLMixin, MultiLabelModel):
    r"""Query2Label: label queries decoded against the image tokens by a transformer
    decoder, one linear classifier per label (Liu et al., 2021, Sec. 3).

    **Tokens.** The backbone's last feature map
    :math:`\mathbf{F}_0 \in \mathbb{R}^{D \times h \times w}` is projected to :math:`d`
    (when :math:`d \ne D`) and flattened, :math:`\mathbf{F} \in \mathbb{R}^{hw \times d}`,
    with a 2-d sine position code :math:`\mathbf{P}` added to the keys
    (:func:`sine_position_embedding`); ``encoder_layers`` transformer encoder layers
    (self-attention over the tokens) refine them.

    **Decoder.** :math:`C` learnable label queries
    :math:`\mathbf{Q}_0 \in \mathbb{R}^{C \times d}` pass :math:`L` decoder layers
    (:class:`TransformerLayer`), each

    .. math::
        \mathbf{Q}^{(1)}_i = \mathrm{MHA}(\mathbf{Q}_{i-1}, \mathbf{Q}_{i-1},
            \mathbf{Q}_{i-1}),\quad
        \mathbf{Q}^{(2)}_i = \mathrm{MHA}(\mathbf{Q}^{(1)}_i, \mathbf{F} + \mathbf{P},
            \mathbf{F}),\quad
        \mathbf{Q}_i = \mathrm{FFN}(\mathbf{Q}^{(2)}_i)

    (residuals and LayerNorm after each block, dropout 0.1).

    **Classifier.** Label :math:`k`'s logit is a linear projection of
    its own query, :math:`\mathbf{W} \in \mathbb{R}^{C \times d}`,
    :math:`\mathbf{b} \in \mathbb{R}^{C}`:

    .. math::
        \hat{y}_k = \langle \mathbf{w}_k, \mathbf{Q}_{L,k} \rangle + b_k

    **Loss:** the simplified asymmetric loss, ASL without the
    probability margin (:func:`pyg_mlic.losses.asymmetric_loss`, ``asl_clip=0``),
    :math:`\gamma_+ = 0`, :math:`\gamma_- = 2` as in the authors' released training
    command, summed like ASL's code.

    **Label graph.** The decoder's self-attention :math:`\mathbf{A}_{l,h} \in [0,1]^{C\times C}`
    (row :math:`i`: how label :math:`i`'s query distributes its attention over the label
    queries, each row sums to 1) is a learned directed label graph;
    :meth:`label_graph` exports its mean over heads, layers and images as a
    :class:`torch_geometric.data.Data`. The first layer's self-attention only sees the
    learned :math:`\mathbf{Q}_0`, so it is the same for every image
    (``decoder_self_attention="skip_first"`` removes it; the authors' released code
    removes the decoder's self-attention unless told to keep it, ``"none"`` here);
    later layers' depend on the image.

    Features input (``input_kind="features"``): no spatial map; the feature vector is
    split into ``feature_tokens`` learned tokens (:class:`SpatialTokens`) and no position
    code is used.

    Args:
        classes (list[str]): class names (:math:`C` queries).
        input_kind (str): ``"image"`` or ``"features"``.
        backbone (str): (default: :obj:`"resnet101"`, the paper's main CNN setting)
        backbone_weights (str, optional): local weights file.
        in_features (int, optional): feature size for feature datasets.
        hidden_dim (int, optional): :math:`d`. (default: from :func:`default_q2l_widths`:
            :math:`D` rounded to a multiple of ``heads``; 2048 at :math:`D = 2048`)
        ffn_dim (int, optional): feed-forward width. (default: :math:`4d`; 8192 at
            :math:`d = 2048`)
        heads (int): attention heads. (default: :obj:`4`)
        encoder_layers (int): transformer encoder layers over the tokens. (default:
            :obj:`1`, the authors' ResNet-101 setting)
        decoder_layers (int): :math:`L`. (default: :obj:`2`)
        decoder_self_attention (str): ``"all"`` (every decoder layer, the paper's),
            ``"skip_first"`` (not in the first layer, whose self-attention is the same for
            every image) or ``"none"`` (no label graph). (default: :obj:`"all"`)
        dropout (float): (default: :obj:`0.1`)
        position_embedding (str): ``"sine"`` or ``"none"``. (default: :obj:`"sine"`)
        input_proj (bool, optional): project the tokens from :math:`D` to :math:`d`.
            (default: :obj:`None` = only when :math:`d \ne D`, as the authors' code)
        feature_tokens (int): tokens for feature input. (default: :obj:`1`)
        pool (str): pooling of the image vector reported in ``extras["features"]``.
            (default: :obj:`"avg"`)
        asl_gamma_pos, asl_gamma_neg, asl_clip (float): ASL's :math:`\gamma_+`,
            :math:`\gamma_-`, margin. (default: 0, 2, 0)
        asl_disable_focal_grad (bool): no gradient through the focusing weights (the
            authors' ``--dtgfl``). (default: :obj:`True`)
        asl_reduction (str): ``"sum"`` or ``"mean"`` (see
            :class:`~pyg_mlic.models.iml_gcn.ASLBaseline`). (default: :obj:`"sum"`)
        encoder_hidden, encoder_out: the MLP encoder of feature datasets.

    Shapes:
        - **input:** batch with ``image`` :math:`(B, 3, H, W)` or ``features`` :math:`(B, F)`
        - **output:** :class:`~pyg_mlic.models.ModelOutput` with ``logits`` :math:`(B, C)`;
          ``extras``: ``"features"`` :math:`(B, D)`, ``"self_attention"`` (list over the
          decoder layers of :math:`(B, H, C, C)`), ``"cross_attention"`` (list of
          :math:`(B, H, C, N)`)
    """

    #: the authors' ResNet-101 recipe (their training command): AdamW, lr 1e-4 with a
    #: one-cycle schedule, weight decay 1e-2, EMA of the weights (0.9997), 80 epochs, batch
    #: 64, one rate for all parameters
    default_train_config = dict(optimizer="adamw", lr=1e-4, backbone_lr=None,
                                weight_decay=1e-2, lr_step=None, schedule="onecycle",
                                ema=0.9997, epochs=80, batch_size=64)
    #: the authors' augmentation: Cutout (half the side) and RandAugment; read by
    #: pyg_mlic.data.factory.resolve_data_config on real datasets
    default_data_config = dict(randaugment=dict(num_ops=2, magnitude=9), cutout=0.5)

    SELF_ATTENTION = ("all", "skip_first", "none")

    def __init__(self, classes: Sequence[str], input_kind: str = "image",
                 backbone: str = "resnet101", backbone_weights: Optional[str] = None,
                 in_features: Optional[int] = None, hidden_dim: Optional[int] = None,
                 ffn_dim: Optional[int] = None, heads: int = 4, encoder_layers: int = 1,
                 decoder_layers: int = 2, decoder_self_attention: str = "all",
                 dropout: float = 0.1, position_embedding: str = "sine",
                 input_proj: Optional[bool] = None, feature_tokens: int = 1,
                 pool: str = "avg", asl_gamma_pos: float = 0.0, asl_gamma_neg: float = 2.0,
                 asl_clip: float = 0.0, asl_disable_focal_grad: bool = True,
                 asl_reduction: str = "sum", encoder_hidden: Sequence[int] = (512,),
                 encoder_out: int = 512):
        super().__init__(classes)
        who = "q2l"
        heads = _check_int(who, "heads", heads, 1)
        encoder_layers = _check_int(who, "encoder_layers", encoder_layers, 0)
        decoder_layers = _check_int(who, "decoder_layers", decoder_layers, 1)
        dropout = _check_dropout(who, dropout)
        if decoder_self_attention not in self.SELF_ATTENTION:
            raise ValueError(f"{who}: decoder_self_attention must be one of "
                             f"{list(self.SELF_ATTENTION)}, got {decoder_self_attention!r}")
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"{who}: position_embedding must be one of "
                             f"{list(POSITION_EMBEDDINGS)}, got {position_embedding!r}")
        self.encoder = build_encoder(input_kind, backbone=backbone,
                                     backbone_weights=backbone_weights, pool=pool,
                                     in_features=in_features, encoder_hidden=encoder_hidden,
                                     encoder_out=encoder_out)
        D = int(self.encoder.out_channels)
        d0, _ = default_q2l_widths(D, heads)
        d = d0 if hidden_dim is None else _check_int(who, "hidden_dim", hidden_dim, 1)
        if d % heads:
            raise ValueError(f"{who}: hidden_dim ({d}) must be divisible by heads ({heads})")
        ffn = 4 * d if ffn_dim is None else _check_int(who, "ffn_dim", ffn_dim, 1)
        project = (d != D) if input_proj is None else bool(input_proj)
        self.tokens = SpatialTokens(self.encoder, d, input_kind, feature_tokens,
                                    project=project, activation=False,
                                    position_embedding=position_embedding)
        self.token_encoder = nn.ModuleList(
            TransformerLayer(d, heads, ffn, dropout, self_attention=True, cross_attention=False)
            for _ in range(encoder_layers))
        sa = [decoder_self_attention == "all" or (decoder_self_attention == "skip_first"
                                                  and i > 0) for i in range(decoder_layers)]
        self.decoder = nn.ModuleList(
            TransformerLayer(d, heads, ffn, dropout, self_attention=s, cross_attention=True)
            for s in sa)
        C = self.num_classes
        self.query_embed = nn.Parameter(torch.randn(C, d))     # N(0, 1), as nn.Embedding
        bound = 1.0 / math.sqrt(d)
        self.fc_weight = nn.Parameter(torch.empty(C, d).uniform_(-bound, bound))
        self.fc_bias = nn.Parameter(torch.empty(C).uniform_(-bound, bound))
        self.input_kind = input_kind
        self.hidden_dim, self.ffn_dim, self.heads = d, ffn, heads
        self._init_asl(asl_gamma_pos, asl_gamma_neg, asl_clip, asl_disable_focal_grad,
                       asl_reduction)
        self.record_resolved(hidden_dim=d, ffn_dim=ffn, input_proj=project)

    # ------------------------------------------------------------------ forward
    def decode(self, x: Tensor) -> Dict[str, Any]:
        """Run the head on an input tensor: ``{"logits", "features", "queries",
        "self_attention", "cross_attention"}`` (attention lists over decoder layers)."""
        tokens, pos, pooled = self.tokens(self.encoder, x)
        pos = None if pos is None else pos.unsqueeze(0)
        for layer in self.token_encoder:
            tokens, _ = layer(tokens, query_pos=pos)
        q = self.query_embed.unsqueeze(0).expand(x.size(0), -1, -1)
        self_attn: List[Tensor] = []
        cross_attn: List[Tensor] = []
        for layer in self.decoder:
            q, a = layer(q, tokens, memory_pos=pos)
            if "self" in a:
                self_attn.append(a["self"])
            cross_attn.append(a["cross"])
        logits = (q * self.fc_weight).sum(-1) + self.fc_bias
        return {"logits": logits, "features": pooled, "queries": q,
                "self_attention": self_attn, "cross_attention": cross_attn}

    def _input(self, batch: Batch) -> Tensor:
        if debug_checks():
            from pyg_mlic.data.base import check_batch_finite

            check_batch_finite(batch)
        return batch["features"] if "features" in batch else batch["image"]

    def logits_from_input(self, x: Tensor) -> Tensor:
        """Logits ``[B, C]`` of an input tensor (images or features)."""
        return self.decode(x)["logits"]

    def forward(self, batch: Batch) -> ModelOutput:
        r = self.decode(self._input(batch))
        return ModelOutput(r["logits"], extras={
            "features": r["features"], "self_attention": r["self_attention"],
            "cross_attention": r["cross_attention"]})

    # ------------------------------------------------------------------ label graph
    @torch.no_grad()
    def label_graph(self, batch: Union[None, Mapping[str, Any], Tensor] = None):
        r"""The label-query self-attention as a weighted directed label graph
        (:class:`torch_geometric.data.Data` with :math:`C` nodes).

        .. math::
            A_{ij} = \frac{1}{|\mathcal{B}|\,|\mathcal{L}|\,H}
            \sum_{b \in \mathcal{B}} \sum_{l \in \mathcal{L}} \sum_{h=1}^{H}
            \big(\mathbf{A}^{(b)}_{l,h}\big)_{ij}

        the attention label :math:`i`'s query pays to label :math:`j`'s, averaged over the
        heads, the decoder layers :math:`\mathcal{L}` with self-attention and the images
        of ``batch``. Each row sums to 1, so the in-edges of a node sum to 1 (edge
        :math:`j \to i` carries :math:`A_{ij}`). Computed in eval mode (no dropout).

        Args:
            batch: a collated batch (``image`` or ``features``) or an input tensor; the
                graph is averaged over its images. :obj:`None`: only the first decoder
                layer, whose self-attention sees nothing but the learned queries and is
                the same for every image (needs self-attention in the first layer).

        Returns:
            Data: ``x`` = the learned queries :math:`\mathbf{Q}_0` ``[C, d]``,
            ``edge_index`` / ``edge_weight``, ``adj`` (dense :math:`\mathbf{A}`),
            ``classes``, ``kind="q2l_self_attention"``, ``layers`` (indices of the layers
            averaged), ``num_images`` (0 without a batch).
        """
        layers = [i for i, l in enumerate(self.decoder) if l.self_attn is not None]
        if not layers:
            raise ValueError("q2l.label_graph: the decoder has no self-attention "
                             "(decoder_self_attention='none'): there is no label graph")
        was_training = self.training
        self.eval()
        try:
            if batch is None:
                if layers[0] != 0:
                    raise ValueError("q2l.label_graph(None): the first decoder layer has no "
                                     "self-attention (decoder_self_attention='skip_first'), so "
                                     "every label graph depends on the image; pass a batch")
                first = self.decoder[0]
                q0 = self.query_embed.unsqueeze(0)
                _, attn = first.self_attn(q0, q0, q0)
                adj, used, n = attn[0].mean(0), [0], 0
            else:
                x = _batch_input(self, batch)
                r = self.decode(x)
                adj = torch.stack(r["self_attention"]).mean(dim=(0, 1, 2))  # L, B, H
                used, n = layers, int(x.size(0))
        finally:
            self.train(was_training)
        return label_graph_data(adj, self.query_embed, self.classes,
                                kind="q2l_self_attention", layers=used, num_images=n)

    def export_module(self) -> nn.Module:
        """The whole model as ``input -> logits`` (:class:`InputToLogits`): the labels'
        classifiers depend on the image through the decoder, so there is no linear layer
        to freeze."""
        return InputToLogits(self)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, hidden_dim={self.hidden_dim}, "
                f"heads={self.heads}, encoder_layers={len(self.token_encoder)}, "
                f"decoder_layers={len(self.decoder)}")


# The demo row: no transformer encoder over the tokens (optional in the paper; the authors
# use one with ResNet-101). Over the 16 tokens of a CNN trained from scratch for 5 epochs it
# slows training: test mAP 61.1 with it, 64.2 without (baseline 69.0), measured on the
# synthetic scenes at the demo settings (docs/methods/q2l.rst)
register_demo_row("q2l", "q2l", encoder_layers=0)

__all__ = ["Query2Label", "MultiHeadAttention", "TransformerLayer", "SpatialTokens",
           "InputToLogits", "sine_position_embedding", "default_q2l_widths",
           "label_graph_data", "round_to_multiple"]
