"""Label-embedding providers: the GCN's input node features :math:`\\mathbf{Z} \\in
\\mathbb{R}^{C \\times d}` (ML-GCN Sec. 3.2).

>>> from pyg_mlic.embeddings import load_label_embeddings
>>> Z = load_label_embeddings("npz:../shared/data/embeddings/glove300_coco.npz",
...                           ["dog", "cat"])            # doctest: +SKIP
>>> Z.shape                                               # doctest: +SKIP
torch.Size([2, 300])

Specs: ``onehot``, ``npz:PATH``, ``glove:PATH`` / ``glove``, ``minilm[:DIR]``,
``image-features`` (IML-GCN recipe). Add one with :func:`register_embedding_provider`.
"""
from pyg_mlic.embeddings.registry import (
    EmbeddingSpec,
    check_embeddings,
    list_embedding_providers,
    load_label_embeddings,
    register_embedding_provider,
)
from pyg_mlic.embeddings import providers as _providers  # noqa: F401  (registers the built-ins)
from pyg_mlic.embeddings.glove import DEFAULT_ALIASES, class_words, glove_embeddings
from pyg_mlic.embeddings.providers import default_label_embeddings, read_vectors_npz

__all__ = [
    "EmbeddingSpec",
    "load_label_embeddings",
    "list_embedding_providers",
    "register_embedding_provider",
    "check_embeddings",
    "glove_embeddings",
    "class_words",
    "read_vectors_npz",
    "default_label_embeddings",
    "DEFAULT_ALIASES",
]
