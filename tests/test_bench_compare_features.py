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


def test_engine_scores_from_the_checkpoint_and_the_paired_bootstrap(cf, tmp_path):
    """The engine's test logits are predicted again from the checkpoint each run evaluated
    (their mAP must be the reported one, else _checkpoint_scores raises), and the bootstrap
    block compares each engine model with each peer on those rows."""
    pytest.importorskip("sklearn")
    train = make_features_npz(tmp_path / "train.npz", n=80, c=3, seed=0)
    test = make_features_npz(tmp_path / "test.npz", n=40, c=3, seed=1)
    scores = {"baseline": [], "logreg": []}
    m = cf.engine_defaults("baseline", train, test, seeds=[0, 1], scores_out=scores["baseline"])
    assert len(scores["baseline"]) == 2 and scores["baseline"][0].shape == (40, 3)
    assert m["mAP_runs"][0] != m["mAP_runs"][1]  # two seeds, two models
    cf.sklearn_eval("logreg", dict(scale="std", C=1.0), train, test, [0],
                    scores_out=scores["logreg"])
    boot = cf.bootstrap(scores, np.load(test)["labels"], num_resamples=200)
    b = boot["baseline - logreg"]
    assert set(boot) == {"baseline - logreg"}
    assert b["mAP_a"] == pytest.approx(m["mAP"], abs=1e-9)
    assert b["ci"][0] <= b["diff"] <= b["ci"][1]
    assert b["verdict"] == ("beats" if b["ci"][0] > 0 else "below" if b["ci"][1] < 0
                            else "matches")
    assert "baseline - logreg" in cf.format_bootstrap(boot)


def test_report_tables(cf):
    """The tables run_all.py renders: each model's test mAP and the bootstrap verdicts."""
    m = {"mAP": 0.5, "mAP_runs": [0.4, 0.6]}
    b = {"diff": -0.01, "ci": [-0.03, 0.02], "p_a_below_b": 0.7, "verdict": "matches"}
    r = {"features": {"dataset": "X", "sizes": {"test": 9}},
         "test": {"blk": {"baseline (engine defaults)": m}},
         "bootstrap": {"blk": {"baseline - logreg": b}}}
    t1, t2 = cf.report_tables(r)
    assert t1["rows"] == [["baseline (engine defaults)", "50.00", "40.00 / 60.00"]]
    assert t2["rows"] == [["baseline - logreg", "-1.00", "[-3.00, +2.00]", "0.70", "matches"]]
    assert "9 test rows" in t2["title"] and len(t2["header"]) == len(t2["rows"][0])
