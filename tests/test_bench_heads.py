"""benchmarks/bench_heads.py, ``transformer_heads`` section: the heads run alone on a
feature map (the model's own ``decode``, backbone replaced), the C-independent layers are
shared across the sweep, and the section's ratios form a valid ``ratios`` block. Tiny
widths and a 64-px image keep it to seconds; the timings themselves are not checked."""
import pytest
import torch

from helpers_bench import import_benchmarks

#: small widths (the benchmark's defaults are the paper's, far too slow for a test)
SMALL = {"ml_decoder": dict(embed_dim=16, ffn_dim=32), "q2l": dict(hidden_dim=16, ffn_dim=32)}


@pytest.fixture()
def bench():
    common, bench_heads = import_benchmarks("_common", "bench_heads")
    return bench_heads, common


def test_heads_alone_on_a_feature_map(bench):
    mod, _ = bench
    h80 = mod._transformer_heads(80, options=SMALL)
    h200 = mod._transformer_heads(200, shared=h80, options=SMALL)
    mld, q2l = h200["ml_decoder"], h200["q2l"]
    assert (mld.num_groups, mld.group_size) == (100, 2)          # K = min(C, 100)
    assert mld.decoder is h80["ml_decoder"].decoder               # shared across C
    assert q2l.token_encoder is h80["q2l"].token_encoder
    assert q2l.query_embed.shape[0] == 200                        # one query per class
    fmap = torch.randn(2, 2048, 3, 3, requires_grad=True)
    for m in h200.values():
        out = m.logits_from_input(fmap)
        assert out.shape == (2, 200)
        out.sum().backward()
    assert fmap.grad is not None and fmap.grad.abs().sum() > 0   # reaches the feature map


def test_section_ratios(bench):
    mod, common = bench
    r = mod.bench_transformer_heads(batch=1, backbone_batch=1, image=64, repeats=1,
                                    classes=(80, 200), options=SMALL)
    assert r["feature_map"] == [1, 2048, 2, 2]
    rat = mod.ratios({"transformer_heads": r})
    common.check_ratios(rat)
    for name in ("ml_decoder", "q2l"):
        for C in (80, 200):
            assert f"transformer_heads.{name}[C={C}].head_over_backbone" in rat
            assert rat[f"transformer_heads.{name}[C={C}].fwd_flops_over_backbone"]["value"] > 0
        assert f"transformer_heads.{name}[C=200].over_C80" in rat
        assert f"transformer_heads.{name}[C=80].over_C80" not in rat
    assert set(r["ml_decoder_over_q2l"]) == {"80", "200"}
    with pytest.raises(ValueError, match="C = 80"):
        mod.bench_transformer_heads(classes=(200,))
