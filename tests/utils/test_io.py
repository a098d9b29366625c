"""pyg_mlic.utils.io: atomic writes leave the old file or the new one, never a torn one."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyg_mlic.utils.io import (atomic_np_save, atomic_np_savez, atomic_torch_save, atomic_write,
                               atomic_write_bytes, atomic_write_json, atomic_write_text,
                               json_default)


class Boom(Exception):
    pass


def _listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def test_new_file_parents_and_permissions(tmp_path):
    p = atomic_write_bytes(tmp_path / "a" / "b" / "x.bin", b"\x00\x01")
    assert p == tmp_path / "a" / "b" / "x.bin" and p.read_bytes() == b"\x00\x01"
    assert _listing(p.parent) == ["x.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask       # not mkstemp's 0o600


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_failure_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path, exc):
    p = atomic_write_text(tmp_path / "x.json", "old")

    def write(f):
        f.write(b"new, half written")
        f.flush()
        raise exc("disk full")

    with pytest.raises(exc, match="disk full"):
        atomic_write(p, write)
    assert p.read_text() == "old"
    assert _listing(tmp_path) == ["x.json"]


def test_failure_in_replace_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    p = atomic_write_text(tmp_path / "x.txt", "old")

    def replace(src, dst):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="cross-device"):
        atomic_write_text(p, "new")
    monkeypatch.undo()
    assert p.read_text() == "old" and _listing(tmp_path) == ["x.txt"]


def test_failure_on_a_new_path_creates_nothing(tmp_path):
    def write(f):
        raise Boom()

    with pytest.raises(Boom):
        atomic_write(tmp_path / "new.bin", write)
    assert _listing(tmp_path) == []


def test_overwrite_and_text_encoding(tmp_path):
    p = atomic_write_text(tmp_path / "t.txt", "first")
    atomic_write_text(p, "zweite Zeile — ünïcode\n")
    assert p.read_bytes() == "zweite Zeile — ünïcode\n".encode("utf-8")
    assert _listing(tmp_path) == ["t.txt"]


def test_json_of_numpy_tensor_and_path_values(tmp_path):
    obj = {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True), "s": np.str_("x"),
           "a": np.arange(4, dtype=np.uint8).reshape(2, 2), "t": torch.tensor([1.5, 2.0]),
           "t0": torch.tensor(7), "g": torch.ones(2, requires_grad=True) * 2,
           "p": Path("runs") / "x", "nested": [{"v": np.float64(0.25)}], "tuple": (1, 2)}
    p = atomic_write_json(tmp_path / "m.json", obj)
    text = p.read_text()
    assert text.endswith("\n") and text.startswith("{\n  ")          # indent=2
    assert json.loads(text) == {"i": 3, "f": 0.5, "b": True, "s": "x", "a": [[0, 1], [2, 3]],
                                "t": [1.5, 2.0], "t0": 7, "g": [2.0, 2.0],
                                "p": str(Path("runs") / "x"), "nested": [{"v": 0.25}],
                                "tuple": [1, 2]}
    assert json.loads(atomic_write_json(p, [1], indent=None).read_text()) == [1]


def test_unserialisable_json_leaves_the_old_file(tmp_path):
    p = atomic_write_json(tmp_path / "m.json", {"ok": 1})
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        atomic_write_json(p, {"bad": object()})
    assert json.loads(p.read_text()) == {"ok": 1} and _listing(tmp_path) == ["m.json"]
    with pytest.raises(TypeError, match="set"):
        json_default({1, 2})


def test_torch_save_round_trip_weights_only(tmp_path):
    state = {"w": torch.randn(3, 2), "n": torch.tensor(5), "name": "x"}
    p = atomic_torch_save(state, tmp_path / "ck" / "m.pt")
    out = torch.load(p, weights_only=True)
    assert torch.equal(out["w"], state["w"]) and out["n"] == 5 and out["name"] == "x"
    assert _listing(p.parent) == ["m.pt"]


def test_np_save_and_savez_keep_the_name(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    p = atomic_np_save(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(np.load(p, allow_pickle=False), a)
    with pytest.raises(ValueError):                      # object arrays need allow_pickle
        atomic_np_save(tmp_path / "o.npy", np.array([{}], dtype=object))
    for compress in (False, True):
        q = atomic_np_savez(tmp_path / f"z{compress}.data", {"a": a, "b": np.ones(2)},
                            compress=compress)
        with np.load(q, allow_pickle=False) as z:
            assert sorted(z.files) == ["a", "b"]
            np.testing.assert_array_equal(z["a"], a)
    assert _listing(tmp_path) == ["a.npy", "zFalse.data", "zTrue.data"]


def test_old_names_are_the_shared_helpers():
    import pyg_mlic.engine as engine
    import pyg_mlic.engine.checkpoint as checkpoint
    import pyg_mlic.utils.io as io

    assert engine.write_json is io.atomic_write_json
    assert engine.atomic_torch_save is checkpoint.atomic_torch_save is io.atomic_torch_save
    assert checkpoint.atomic_write is io.atomic_write


def test_utils_imports_nothing_else_of_pyg_mlic():
    code = ("import sys, pyg_mlic.utils.io, pyg_mlic.utils.registry; "
            "print(sorted(m for m in sys.modules if m.startswith('pyg_mlic'))); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == str(sorted(["pyg_mlic", "pyg_mlic.version", "pyg_mlic.utils",
                                 "pyg_mlic.utils.io", "pyg_mlic.utils.registry"]))
    assert out[1] == "False"                             # torch only when a torch helper runs
