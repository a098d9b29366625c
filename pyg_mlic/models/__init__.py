"""Models: one method per file, a timm-style registry and the plain baseline.

>>> from pyg_mlic.models import build_model, list_models
>>> list_models()  # doctest: +SKIP
['baseline', 'ml_gcn', ...]
"""
from pyg_mlic.models.base import ModelOutput, MultiLabelModel, build_encoder
from pyg_mlic.models.registry import (ablation_tables, build_model, demo_rows, get_model_class,
                                      list_models, register_ablation, register_demo_row,
                                      register_model)

# importing the modules registers the models
from pyg_mlic.models import baseline, ml_gcn  # noqa: F401,E402
from pyg_mlic.models import a_gcn  # noqa: F401,E402
from pyg_mlic.models import iml_gcn  # noqa: F401,E402
from pyg_mlic.models import ia_gcn  # noqa: F401,E402
from pyg_mlic.models import gm_mlic  # noqa: F401,E402
from pyg_mlic.models import ml_decoder, q2l  # noqa: F401,E402

__all__ = ["ModelOutput", "MultiLabelModel", "build_encoder", "build_model", "get_model_class",
           "list_models", "register_model", "register_demo_row", "demo_rows",
           "register_ablation", "ablation_tables"]
