"""Training engine shared by all models: config, loop, checkpoints."""
from pyg_mlic.engine.checkpoint import (atomic_torch_save, load_checkpoint, model_from_checkpoint,
                                        save_checkpoint)
from pyg_mlic.engine.config import TrainConfig
from pyg_mlic.engine.trainer import (Trainer, evaluate, make_loader, predict, seed_everything,
                                     write_json)

__all__ = ["TrainConfig", "Trainer", "evaluate", "predict", "make_loader", "seed_everything",
           "save_checkpoint", "load_checkpoint", "model_from_checkpoint", "atomic_torch_save",
           "write_json"]
