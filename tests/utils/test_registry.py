"""pyg_mlic.utils.registry.Registry and the registries built on it."""
import ast
from pathlib import Path

import pytest

from pyg_mlic.utils.registry import Registry

ROOT = Path(__file__).resolve().parents[2]


def _reg(**kw):
    reg = Registry("widget", **kw)

    @reg.register("beta")
    def beta():
        return "b"

    reg.register("alpha", len)
    return reg, beta


def test_register_decorator_and_direct_lookup():
    reg, beta = _reg()
    assert beta() == "b" and reg.get("beta") is beta and reg["alpha"] is len
    assert reg.names() == ["alpha", "beta"] and reg.names(sort=False) == ["beta", "alpha"]
    assert list(reg) == ["beta", "alpha"] and len(reg) == 2
    assert reg.items() == [("beta", beta), ("alpha", len)] and reg.values() == [beta, len]
    assert "alpha" in reg and "gamma" not in reg and 3 not in reg
    assert reg.get("gamma", None) is None
    assert repr(reg) == "Registry('widget', names=['beta', 'alpha'])"
    with pytest.raises(KeyError):
        reg["gamma"]


def test_unknown_name_is_one_line_with_valid_names_and_suggestion():
    reg, _ = _reg()
    with pytest.raises(ValueError) as e:
        reg.get("alpah")
    msg = str(e.value)
    assert msg == "unknown widget 'alpah'; valid: ['alpha', 'beta']; did you mean 'alpha'?"
    assert "\n" not in msg
    with pytest.raises(ValueError, match=r"^unknown widget 'zzz'; valid: \['alpha', 'beta'\]$"):
        reg.get("zzz")                                   # nothing close: no suggestion
    err = reg.unknown("gama", valid=["auto", "gamma"], also=" or 'x:<name>'")
    assert str(err) == ("unknown widget 'gama'; valid: ['auto', 'gamma'] or 'x:<name>'; "
                        "did you mean 'gamma'?")


def test_duplicates():
    reg, beta = _reg()
    assert reg.register("beta", beta) is beta            # the same object again: fine
    with pytest.raises(ValueError, match=r"widget 'beta' is already registered \(by .*beta\)"):
        reg.register("beta", len)
    assert reg.register("beta", len, replace=True) is len and reg.get("beta") is len
    with pytest.raises(ValueError, match="non-empty"):
        reg.register("", len)
    with pytest.raises(TypeError, match="widget name must be a string"):
        reg.get(3)


def test_normalize_and_identity():
    reg = Registry("conv", normalize=str.lower, identity=lambda entry: entry[0])
    reg.register("GAT", (len, {"heads": 1}))
    assert reg.get("gat") == (len, {"heads": 1}) and "Gat" in reg and reg.names() == ["gat"]
    assert reg.key("GaT") == "gat"
    reg.register("gat", (len, {"heads": 2}))             # same factory: new defaults kept
    assert reg.get("GAT") == (len, {"heads": 2})
    with pytest.raises(ValueError, match=r"^conv 'gat' is already registered \(by builtins.len\)$"):
        reg.register("gat", (abs, {}))
    with pytest.raises(ValueError, match="did you mean 'gat'"):
        reg.get("GTA")


def test_pop():
    reg, beta = _reg()
    assert reg.pop("beta") is beta and reg.names() == ["alpha"]
    assert reg.pop("beta", None) is None
    with pytest.raises(ValueError, match="unknown widget 'beta'"):
        reg.pop("beta")


# ------------------------------------------------------------------ the library's registries
def test_backbone_registry():
    from pyg_mlic.backbones import build_backbone, list_backbones, register_backbone

    assert {"resnet50", "small_cnn", "tresnet_m"} <= set(list_backbones())
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet5'; valid: \[.*\] or "
                                         r"'timm:<model name>'; did you mean 'resnet50'\?"):
        build_backbone("resnet5")
    with pytest.raises(ValueError, match=r"unknown backbone family 'tim'.*did you mean 'timm:'"):
        build_backbone("tim:resnet18")
    assert build_backbone("Small-CNN").out_channels > 0    # case and '-' as before
    with pytest.raises(ValueError, match="':'"):
        register_backbone("a:b")


def test_region_backend_and_label_conv_registries():
    from pyg_mlic.detection import build_region_extractor
    from pyg_mlic.models.ml_gcn import LABEL_CONVS, resolve_label_conv
    from pyg_mlic.nn import LabelGCNConv

    with pytest.raises(ValueError, match=r"valid: \['auto', .*'groundtruth'.*did you mean "
                                         r"'groundtruth'"):
        build_region_extractor("groundtruht")
    assert resolve_label_conv("GCN") == (LabelGCNConv, {}, "gcn")
    with pytest.raises(ValueError, match=r"unknown conv 'gta'.*'package.module:ClassName'; "
                                         r"did you mean 'gat'"):
        resolve_label_conv("gta")
    assert "gat" in LABEL_CONVS and LABEL_CONVS["gat"][1] == {"edge_dim": 1}


def test_embedding_provider_registry():
    from pyg_mlic.embeddings import registry as er

    assert "onehot" in er.list_embedding_providers()

    @er.register_embedding_provider("zz_test", arg="none")
    def _zz(arg, classes, **kw):
        return None

    try:
        er.register_embedding_provider("zz_test", arg="optional")(_zz)   # same fn: accepted
        assert er._PROVIDERS.get("zz_test").arg == "optional"
        with pytest.raises(ValueError, match=r"already registered \(by .*_zz\)"):
            er.register_embedding_provider("zz_test")(lambda a, c: None)
    finally:
        er._PROVIDERS.pop("zz_test", None)


def _imported_modules(path):
    """Every module a file imports, at the top or inside functions."""
    tree = ast.parse(Path(path).read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_backbone_registry_does_not_import_its_builders():
    # the builders register themselves; the registry importing one back was a cycle
    imported = _imported_modules(ROOT / "pyg_mlic" / "backbones" / "registry.py")
    builders = {"timm_backbone", "resnet", "efficientnet", "small_cnn"}
    assert not {m for m in imported if m.rsplit(".", 1)[-1] in builders}
    # and the package registers all of them on import, timm's included
    import pyg_mlic.backbones.registry as r
    assert {"tresnet_m", "tresnet_l", "tresnet_xl"} <= set(r.list_backbones())
    assert "timm" in r._FAMILIES


def test_utils_modules_import_no_other_pyg_mlic_module():
    for name in ("io.py", "registry.py", "__init__.py"):
        mods = _imported_modules(ROOT / "pyg_mlic" / "utils" / name)
        assert all(m.startswith("pyg_mlic.utils") for m in mods if m.startswith("pyg_mlic")), \
            (name, mods)
