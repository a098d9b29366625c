"""benchmarks/compare_features.py on a features set with a class that has no positive in
the scored split (as MULAN's rare labels do): the class's AP is undefined (None, left out
of mAP) in every run, the mean over runs keeps it None and averages the others, and the
table prints it as n/a instead of failing."""
import numpy as np
import pytest

from helpers_bench import import_benchmarks
from helpers_features import make_features_npz


@pytest.fixture(scope="module")
def cf():
    return import_benchmarks("compare_features")[0]


def test_peer_scored_on_a_split_without_positives_of_one_class(cf, tmp_path):
    pytest.importorskip("sklearn")
    train = make_features_npz(tmp_path / "train.npz", n=120, c=4, seed=0)
    test = make_features_npz(tmp_path / "test.npz", n=60, c=4, seed=1)
    d = dict(np.load(test))
    d["labels"][:, 2] = 0  # class 2 never occurs in the test split
    np.savez(test, **d)
    with pytest.warns(UserWarning, match="no \\(unmasked\\) positive"):
        m = cf.sklearn_eval("mlp", dict(scale="std", hidden=[16], alpha=1e-2, max_iter=50),
                            train, test, seeds=[0, 1])
    assert m["n_runs"] == 2 and m["AP"][2] is None
    assert all(isinstance(a, float) and 0.0 <= a <= 1.0 for i, a in enumerate(m["AP"]) if i != 2)
    # mAP is the mean of the defined APs, run by run
    assert m["mAP"] == pytest.approx(np.mean([a for a in m["AP"] if a is not None]), abs=1e-9)
    table = cf._table({"mlp": m}, ["a", "b", "c", "d"])
    assert "n/a" in table.splitlines()[-1]
