"""pyg_mlic.utils.progress: a progress bar never changes what is computed.

``tqdm.auto.tqdm`` calls ``iter()`` on its iterable in its constructor (the asyncio
mix-in) and again in the loop; each ``iter()`` of a DataLoader draws a base seed from the
global torch generator, so a run with bars on trained with other dropout masks than the
same run with bars off. These tests fail with that class."""
import torch
from torch.utils.data import DataLoader, TensorDataset

from helpers_features import make_features_npz
from pyg_mlic.utils.progress import tqdm


def test_bar_over_a_loader_leaves_the_global_generator_as_without_it():
    loader = DataLoader(TensorDataset(torch.arange(10.0)), batch_size=3, shuffle=False)
    draws = []
    for wrap in (False, True):
        torch.manual_seed(0)
        it = tqdm(loader, disable=False, leave=False) if wrap else loader
        batches = [b[0].tolist() for b in it]
        draws.append((batches, torch.rand(3).tolist()))
    assert draws[0] == draws[1]


def test_training_with_and_without_bars_is_identical(tmp_path):
    from pyg_mlic.data import FeaturesDataset
    from pyg_mlic.engine import fit

    train = FeaturesDataset(make_features_npz(tmp_path / "train.npz", n=96, seed=0),
                            split="train")
    val = FeaturesDataset(make_features_npz(tmp_path / "val.npz", n=48, seed=1), split="val")
    test = FeaturesDataset(make_features_npz(tmp_path / "test.npz", n=48, seed=2), split="test")
    runs = []
    for progress in (False, True):
        # the features recipe trains with dropout, which reads the global generator
        m = fit("baseline", train, val, test,
                train_options=dict(epochs=3, seed=0, progress=progress))
        runs.append(([h["val_mAP"] for h in m["history"]],
                     [h["train_cls"] for h in m["history"]], m["mAP"]))
    assert runs[0] == runs[1]
