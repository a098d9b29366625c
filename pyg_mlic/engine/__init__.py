"""Training engine shared by all models: config, loop, checkpoints, multi-process (DDP)."""
from pyg_mlic.engine import distributed
from pyg_mlic.engine.checkpoint import (atomic_torch_save, load_checkpoint, model_from_checkpoint,
                                        save_checkpoint)
from pyg_mlic.engine.config import TrainConfig
from pyg_mlic.engine.context import model_context
from pyg_mlic.engine.fit import check_fit_options, fit
from pyg_mlic.engine.trainer import (Trainer, evaluate, make_loader, predict, predict_dataset,
                                     seed_everything, write_json)

__all__ = ["fit", "check_fit_options", "model_context", "TrainConfig", "Trainer", "evaluate",
           "predict", "predict_dataset", "make_loader",
           "seed_everything", "save_checkpoint", "load_checkpoint", "model_from_checkpoint",
           "atomic_torch_save", "write_json", "distributed"]
