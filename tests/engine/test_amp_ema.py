"""Mixed precision, EMA of the weights, learning-rate schedules and gradient clipping in
the engine (:mod:`pyg_mlic.engine.amp`, :mod:`~pyg_mlic.engine.ema`,
:mod:`~pyg_mlic.engine.schedules`)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers_features import make_features_npz
from pyg_mlic.data.features import FeaturesDataset
from pyg_mlic.engine import (TrainConfig, Trainer, evaluate, load_checkpoint, make_loader,
                             model_from_checkpoint, predict, seed_everything)
from pyg_mlic.engine.ema import ModelEma
from pyg_mlic.engine.trainer import _TrainStep
from pyg_mlic.errors import CheckpointError, DivergenceError
from pyg_mlic.models import build_model, get_model_class

TIMING = ("eval_time_s", "train_time_s")


@pytest.fixture
def sets(tmp_path):
    tr = FeaturesDataset(make_features_npz(tmp_path / "tr.npz", n=240, seed=0), split="train")
    va = FeaturesDataset(make_features_npz(tmp_path / "va.npz", n=80, seed=1), split="val")
    te = FeaturesDataset(make_features_npz(tmp_path / "te.npz", n=120, seed=2), split="test")
    return tr, va, te


def _model(tr, seed=0, **kw):
    seed_everything(seed)
    return build_model("baseline", classes=tr.classes, input_kind="features",
                       in_features=tr.feature_dim, encoder_hidden=[32], encoder_out=32, **kw)


def _cfg(**kw):
    base = dict(epochs=3, batch_size=32, optimizer="adam", lr=1e-2, lr_step=None,
                progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _strip(m):
    return {k: v for k, v in m.items() if k not in TIMING}


# ------------------------------------------------------------------ options
@pytest.mark.parametrize("kw, match", [
    (dict(amp="fp32"), "amp must be"), (dict(amp="bfloat16"), "amp must be"),
    (dict(ema=1.0), "ema must be a decay"), (dict(ema=0), "ema must be a decay"),
    (dict(ema=True), "ema must be a decay"), (dict(ema="0.9"), "ema must be a decay"),
    (dict(schedule="linear"), "schedule must be one of"),
    (dict(warmup_epochs=-1), "warmup_epochs"), (dict(warmup_epochs=3), "warmup_epochs"),
    (dict(schedule="onecycle", warmup_epochs=1), "own warm-up"),
    (dict(grad_clip=0.0), "grad_clip"), (dict(grad_clip=-1.0), "grad_clip"),
])
def test_bad_values_are_one_line_errors(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        _cfg(**kw)
    assert "\n" not in str(e.value)


def test_cli_flags_reach_the_train_config(tmp_path):
    from pyg_mlic.cli import main

    make_features_npz(tmp_path / "tr.npz", n=96, seed=0)
    make_features_npz(tmp_path / "te.npz", n=48, seed=2)
    out = tmp_path / "run"
    argv = ["train", "--dataset", "features", "--train-file", str(tmp_path / "tr.npz"),
            "--test-file", str(tmp_path / "te.npz"), "--model", "baseline", "--set",
            "encoder_hidden=[16]", "encoder_out=16", "--epochs", "2", "--optimizer", "adam",
            "--no-progress", "--device", "cpu", "--out", str(out), "--amp", "bf16",
            "--ema", "0.9", "--schedule", "cosine", "--warmup-epochs", "0.5",
            "--grad-clip", "2.5"]
    assert main(argv) == 0
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    cfg, refit = settings["train_config"], settings["features_recipe"]["refit"]
    # no validation file: the held-out rows chose raw or EMA weights, and the refit keeps
    # the EMA only when it won (the decay asked for is recorded either way)
    assert refit["ema"] == 0.9 and cfg["ema"] == (0.9 if refit["weights"] == "ema" else None)
    assert (cfg["amp"], cfg["schedule"], cfg["warmup_epochs"], cfg["grad_clip"]) \
        == ("bf16", "cosine", 0.5, 2.5)
    with pytest.raises(SystemExit):  # argparse refuses a precision it does not know
        main(argv + ["--amp", "fp8"])


# ------------------------------------------------------------------ mixed precision
def test_bf16_steps_autocast_the_forward_and_keep_loss_and_grads_fp32(sets):
    tr, _, _ = sets
    model = _model(tr)
    seen = {}
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    last.register_forward_hook(lambda mod, i, o: seen.__setitem__("dtype", o.dtype))
    step = _TrainStep(model, "bf16", "cpu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = iter(make_loader(tr, 32, train=True))
    for _ in range(3):
        loss, parts = step(next(batches))
        assert seen["dtype"] == torch.bfloat16  # the forward ran under autocast
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        for p in model.parameters():
            assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
        opt.step()
    # evaluation under amp: only the forward is autocast, the logits come back fp32 and
    # close to the fp32 forward (bf16 keeps 8 significant bits: ~0.4 % per rounding)
    loader = make_loader(tr, 64, train=False)
    p16, p32 = predict(model, loader, amp="bf16"), predict(model, loader)
    assert p16["logits"].dtype == torch.float32
    scale = p32["logits"].abs().max()
    assert (p16["logits"] - p32["logits"]).abs().max() < 0.03 * scale
    assert not torch.equal(p16["logits"], p32["logits"])  # it really ran in bf16


def test_bf16_training_tracks_fp32(sets, tmp_path):
    """Three epochs in bf16 vs fp32 from the same initialisation and data order.

    Tolerances: bf16 rounds every matmul input to 8 significant bits (relative error
    2^-8 ~ 0.4 %); over 24 Adam steps the two trajectories drift apart by a few per cent
    of the loss, and mAP on 120 test images moves by at most a few hundredths (one
    swapped pair of scores in a class of ~36 positives moves its AP by ~0.01). Measured
    here: train loss within 0.13 % of fp32, val mAP within 0.0002, test mAP equal to 4
    digits. The bounds below (2 % and 0.02) leave room for other CPUs' bf16 kernels and
    orderings; a broken autocast (a bf16 loss, bf16 metrics, wrong dtype) fails them.
    """
    tr, va, te = sets
    ref = Trainer(_model(tr, 7), tr, va, te, _cfg(seed=7), out_dir=tmp_path / "fp32").fit()
    amp = Trainer(_model(tr, 7), tr, va, te, _cfg(seed=7, amp="bf16"),
                  out_dir=tmp_path / "bf16").fit()
    h32 = json.loads((tmp_path / "fp32" / "history.json").read_text())
    h16 = json.loads((tmp_path / "bf16" / "history.json").read_text())
    for a, b in zip(h32, h16):
        assert math.isfinite(b["train_cls"])
        assert b["train_cls"] == pytest.approx(a["train_cls"], rel=0.02)
        assert abs(b["val_mAP"] - a["val_mAP"]) < 0.02
    assert h16[-1]["train_cls"] != h32[-1]["train_cls"]  # bf16 did change the arithmetic
    assert abs(amp["mAP"] - ref["mAP"]) < 0.02 and amp["mAP"] > 0.8
    assert amp["settings"]["train_config"]["amp"] == "bf16"


class _SummedBaseline(get_model_class("baseline")):
    """The baseline with a summed BCE (ASL's reduction): its scaled fp16 gradients
    overflow at the scaler's initial scale of 2^16, so the first steps are skipped."""

    def classification_loss(self, logits, target, mask=None):
        return F.binary_cross_entropy_with_logits(logits.float(), target.float(),
                                                  reduction="sum")


def _summed(tr, seed=0):
    seed_everything(seed)
    return _SummedBaseline(classes=tr.classes, input_kind="features",
                           in_features=tr.feature_dim, encoder_hidden=[32], encoder_out=32)


def test_fp16_steps_skipped_by_the_scaler_are_not_a_divergence(sets, tmp_path, monkeypatch):
    tr, va, te = sets
    t = Trainer(_summed(tr), tr, va, te, _cfg(amp="fp16", epochs=2, lr=1e-3),
                out_dir=tmp_path / "a")
    m = t.fit()
    assert t.scaler.get_scale() < 2.0 ** 16  # overflowing steps were skipped (scale halved)
    assert t._amp_skips == 0 and m["mAP"] > 0.5  # learnt (chance: about 0.35)
    hist = json.loads((tmp_path / "a" / "history.json").read_text())
    assert all(math.isfinite(h["train_cls"]) for h in hist)
    saved = load_checkpoint(tmp_path / "a" / "last.pt")["grad_scaler"]
    assert saved["state"]["scale"] == t.scaler.get_scale()
    # the guard's rule: more than MAX_CONSECUTIVE_SKIPS skips in a row is a divergence
    import pyg_mlic.engine.amp as amp

    monkeypatch.setattr(amp, "MAX_CONSECUTIVE_SKIPS", 0)
    with pytest.raises(DivergenceError, match="skipped by the gradient scaler"):
        Trainer(_summed(tr), tr, va, te, _cfg(amp="fp16", epochs=1, lr=1e-3)).fit()


def test_fp16_non_finite_loss_stops_at_once(tmp_path):
    path = make_features_npz(tmp_path / "big.npz", n=64)
    import numpy as np

    arrays = dict(np.load(path))
    arrays["features"] = arrays["features"] * 1e5  # finite in fp32, inf once cast to fp16
    np.savez(path, **arrays)
    tr = FeaturesDataset(path, split="train")
    with pytest.raises(DivergenceError, match="non-finite loss at epoch 1, step 1"):
        Trainer(_model(tr), tr, None, tr, _cfg(amp="fp16", epochs=1)).fit()
    # fp32 trains on the same data: the overflow is fp16's
    Trainer(_model(tr), tr, None, tr, _cfg(epochs=1, optimizer="sgd", lr=1e-9)).fit()


# ------------------------------------------------------------------ EMA
def test_model_ema_update_rule_and_buffers():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = ModelEma(net, 0.75)
    assert all(not p.requires_grad for p in ema.module.parameters())
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    net(torch.randn(8, 3))  # BatchNorm statistics and counter move
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.update(net)
    now, model = ema.module.state_dict(), net.state_dict()
    for k in ("0.weight", "0.bias", "1.running_mean", "1.running_var"):
        torch.testing.assert_close(now[k], 0.75 * before[k] + 0.25 * model[k], rtol=0, atol=1e-6)
    assert now["1.num_batches_tracked"].dtype == torch.int64  # 0-d integer: copied
    assert int(now["1.num_batches_tracked"]) == int(model["1.num_batches_tracked"]) == 1
    state = ema.state_dict()
    other = ModelEma(net, 0.75)
    other.load_state_dict(state)
    assert other.updates == 1 and all(torch.equal(other.module.state_dict()[k], v)
                                      for k, v in now.items())
    with pytest.raises(ValueError, match="decay"):
        ModelEma(net, 0.5).load_state_dict(state)
    with pytest.raises(ValueError, match="ema must be a decay"):
        ModelEma(net, 1.5)
    ema.train()
    assert not ema.module.training  # the average is never put in training mode


def test_ema_best_val_chooses_the_best_of_raw_and_ema(sets, tmp_path):
    tr, va, te = sets
    out = tmp_path / "best"
    m = Trainer(_model(tr, 3), tr, va, te, _cfg(epochs=4, ema=0.7, select="best_val"),
                out_dir=out).fit()
    hist = json.loads((out / "history.json").read_text())
    assert all("val_mAP" in h and "val_mAP_ema" in h for h in hist)
    scores = [(h[key], h["epoch"], w) for h in hist
              for key, w in (("val_mAP", "raw"), ("val_mAP_ema", "ema"))]
    best = max(scores, key=lambda s: s[0])
    assert m["selection"]["weights"] == best[2] and m["selection"]["epoch"] == best[1]
    assert m["selection"]["best_val_mAP"] == best[0]
    # best.pt holds the chosen weights: they reproduce the recorded validation mAP
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["weights"] == best[2]
    assert evaluate(model_from_checkpoint(out / "best.pt"), va)["mAP"] == pytest.approx(best[0])


def test_ema_select_last_evaluates_the_ema_weights(sets, tmp_path):
    tr, va, te = sets
    out = tmp_path / "last"
    t = Trainer(_model(tr, 3), tr, va, te, _cfg(epochs=3, ema=0.8), out_dir=out)
    m = t.fit()
    assert m["selection"]["weights"] == "ema"
    ckpt = load_checkpoint(out / "last.pt")
    # last.pt: the EMA weights as its state_dict (what eval/predict load), the trained
    # weights beside them (what --resume continues)
    assert ckpt["weights"] == "ema" and "raw_state_dict" in ckpt
    assert any(not torch.equal(ckpt["state_dict"][k], ckpt["raw_state_dict"][k])
               for k in ckpt["state_dict"] if ckpt["state_dict"][k].is_floating_point())
    assert evaluate(model_from_checkpoint(out / "last.pt"), te)["mAP"] == m["mAP"]
    hist = json.loads((out / "history.json").read_text())
    assert hist[-1]["val_mAP_ema"] != hist[-1]["val_mAP"]


@pytest.mark.parametrize("opts", [dict(ema=0.8),
                                  dict(ema=0.8, amp="fp16", select="best_val")],
                         ids=["ema", "ema-fp16-best_val"])
def test_resume_with_ema_equals_the_uninterrupted_run(sets, tmp_path, opts):
    """2 epochs, then --resume to 3 == 3 epochs straight: metrics, history, EMA and raw
    weights (and the fp16 scaler) exactly."""
    tr, va, te = sets
    full = Trainer(_model(tr, 5, dropout=0.2), tr, va, te, _cfg(epochs=3, seed=5, **opts),
                   out_dir=tmp_path / "a").fit()
    Trainer(_model(tr, 5, dropout=0.2), tr, va, te, _cfg(epochs=2, seed=5, **opts),
            out_dir=tmp_path / "b").fit()
    resumed = Trainer(_model(tr, 99, dropout=0.2), tr, va, te, _cfg(epochs=3, seed=5, **opts),
                      out_dir=tmp_path / "b").fit(resume=True)
    assert _strip(resumed) == _strip(full)
    assert json.loads((tmp_path / "b" / "history.json").read_text()) == \
        json.loads((tmp_path / "a" / "history.json").read_text())
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for key in ("state_dict", "raw_state_dict"):  # EMA weights, trained weights
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert a["ema"]["updates"] == b["ema"]["updates"] == 3 * 8
    if "amp" in opts:
        assert a["grad_scaler"] == b["grad_scaler"]


def test_resume_refuses_other_amp_or_ema(sets, tmp_path):
    tr, va, te = sets
    Trainer(_model(tr), tr, va, te, _cfg(epochs=1, ema=0.9), out_dir=tmp_path).fit()
    for change in (dict(ema=None), dict(ema=0.99), dict(amp="bf16")):
        opts = {"ema": 0.9, **change}
        with pytest.raises(CheckpointError, match=next(iter(change))):
            Trainer(_model(tr), tr, va, te, _cfg(epochs=2, **opts),
                    out_dir=tmp_path).fit(resume=True)


# ------------------------------------------------------------------ schedules, clipping
def _lrs(cfg, tr, steps_per_epoch):
    t = Trainer(_model(tr), tr, None, tr, cfg)
    opt, sched = t._build_optim(steps_per_epoch)
    lrs = []
    for _ in range(cfg.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if t.schedule_per_step:
            sched.step()
    return lrs, t.schedule_per_step


def test_schedules(sets):
    tr, _, _ = sets
    lr, S = 0.1, 4
    lrs, per_step = _lrs(_cfg(epochs=3, lr=lr, schedule="cosine", warmup_epochs=1), tr, S)
    assert per_step
    assert lrs[:4] == pytest.approx([lr / 4, lr / 2, 3 * lr / 4, lr])  # linear warm-up
    tail = lrs[4:]  # then a half cosine over the remaining 8 steps, towards 0
    assert tail == pytest.approx([lr * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])
    assert all(a > b for a, b in zip(tail, tail[1:])) and 0 < tail[-1] < 0.05 * lr
    # step + warm-up: per batch; the decay still lands on the epoch boundary
    lrs, _ = _lrs(_cfg(epochs=3, lr=lr, lr_step=2, warmup_epochs=0.5), tr, S)
    assert lrs == pytest.approx([lr / 2, lr] + [lr] * 6 + [lr / 10] * 4)
    # the default is unchanged: StepLR stepped per epoch
    lrs, per_step = _lrs(_cfg(epochs=3, lr=lr, lr_step=2), tr, S)
    assert not per_step
    # onecycle: ASL's OneCycleLR, from max_lr / 25 up to max_lr at 20 % of the steps
    S, E = 10, 5
    lrs, _ = _lrs(_cfg(epochs=E, lr=lr, schedule="onecycle"), tr, S)
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert lrs[0] == pytest.approx(lr / 25) and lrs[peak] == pytest.approx(lr)
    assert abs(peak - 0.2 * S * E) <= 1 and lrs[-1] < lr / 1e3


def test_onecycle_short_runs_build_and_warm_up(sets):
    """Runs of 1-9 steps (a debug run, a tiny split): OneCycleLR's own pct_start=0.2
    divides by zero at 5 steps; every length builds, steps, and (from 3 steps) warms up
    from max_lr / 25 before it anneals."""
    tr, _, _ = sets
    lr = 0.1
    for total in range(1, 10):
        lrs, _ = _lrs(_cfg(epochs=1, lr=lr, schedule="onecycle"), tr, total)
        assert len(lrs) == total and all(0 < x <= lr * (1 + 1e-9) for x in lrs), total
        if total >= 3:
            assert lrs[0] == pytest.approx(lr / 25) and max(lrs) > 10 * lrs[0], total


class _CrashingFeatures(FeaturesDataset):
    """Raises after ``fail_after`` samples (a crash in the middle of an epoch)."""

    fail_after = None

    def __getitem__(self, index):
        if self.fail_after is not None:
            self.fail_after -= 1
            if self.fail_after < 0:
                raise RuntimeError("simulated crash")
        return super().__getitem__(index)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_per_batch_schedules_resume_exactly(sets, tmp_path, schedule):
    tr, va, te = sets
    kw = dict(epochs=3, seed=2, schedule=schedule, ema=0.9,
              warmup_epochs=1 if schedule == "cosine" else 0)
    full = Trainer(_model(tr, 2), tr, va, te, _cfg(**kw), out_dir=tmp_path / "a").fit()
    crashing = _CrashingFeatures(tmp_path / "tr.npz", split="train")
    crashing.fail_after = 2 * 240 + 100  # inside the third epoch
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(_model(tr, 2), crashing, va, te, _cfg(**kw), out_dir=tmp_path / "b").fit()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed = Trainer(_model(tr, 9), tr, va, te, _cfg(**kw),
                      out_dir=tmp_path / "b").fit(resume=True)
    assert _strip(resumed) == _strip(full)
    # the schedule spans the run: a resume with another length is refused
    with pytest.raises(CheckpointError, match="epochs"):
        Trainer(_model(tr), tr, va, te, _cfg(**{**kw, "epochs": 4}),
                out_dir=tmp_path / "b").fit(resume=True)


def test_grad_clip_clips_the_global_norm(sets):
    tr, _, _ = sets

    def last_grad_norm(clip):
        model = _model(tr)
        Trainer(model, tr, None, tr, _cfg(epochs=1, grad_clip=clip)).fit()
        return float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in model.parameters()])))

    assert last_grad_norm(None) > 0.05  # the unclipped gradient is larger than the bound
    assert last_grad_norm(0.01) <= 0.01 * (1 + 1e-4)
