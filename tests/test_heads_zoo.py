"""One small model per head kind / feature layout that ``benchmarks/compat.py`` finds supported.

Random weights (never a download), small inputs. For each model: ``lam=0`` is the model's output,
``exact`` is what the head implies (pool → linear: True; a norm / MLP / activation / token after
the pooling: False), the per-location logits are (B, C, L) on the grid the model itself defines,
and ``lam > 0`` gives finite scores that differ from the model's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import pytest
import timm
import torch

from posthoc_csra import CSRAScorer, UnsupportedModelError

BATCH = 2


@dataclass
class Case:
    name: str  # pytest id
    arch: str
    hw: Tuple[int, int]  # input (H, W)
    feature_format: str
    exact: bool
    grid: Tuple[int, int]  # the model's own location grid at ``hw``
    head: str  # a part of the scorer's head_kind
    kwargs: dict = field(default_factory=dict)  # timm.create_model arguments (tiny variants)
    img_size: Optional[int] = None  # created for this size (fixed token / window grid)


SWIN_TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=2)
DEIT_TINY = dict(embed_dim=32, depth=2, num_heads=2)

CASES = [
    # NCHW, pool → linear in the model's own forward_head: exact
    Case("resnet-forward_head", "resnet10t", (64, 64), "NCHW", True, (2, 2), "ResNet.forward_head/Linear"),
    Case("efficientnet", "test_efficientnet", (64, 64), "NCHW", True, (2, 2), "EfficientNet.forward_head"),
    # NCHW, timm ClassifierHead (pool → linear): exact
    Case("regnet-ClassifierHead", "regnetx_002", (64, 64), "NCHW", True, (2, 2), "ClassifierHead/Linear"),
    Case("byobnet-ClassifierHead", "test_byobnet", (64, 64), "NCHW", True, (2, 2), "ClassifierHead/Linear"),
    # NCHW, non-square input: the grid follows the input's aspect
    Case("resnet-non-square", "resnet10t", (64, 128), "NCHW", True, (2, 4), "ResNet.forward_head/Linear"),
    # NCHW, a 1x1 Conv2d classifier after the pool (DLA): exact
    Case("dla-conv-classifier", "dla46_c", (64, 64), "NCHW", True, (2, 2), "DLA.forward_head/Conv2d"),
    # NCHW, NormMlpClassifierHead (pool → LayerNorm → linear): not exact
    Case("convnext-NormMlpClassifierHead", "test_convnext", (64, 64), "NCHW", False, (2, 2),
         "NormMlpClassifierHead/Linear"),
    # NCHW, MobileNetV3 conv head (pool → 1x1 conv → hardswish → linear): not exact
    Case("mobilenetv3-conv-head", "mobilenetv3_small_050", (64, 64), "NCHW", False, (2, 2),
         "MobileNetV3.forward_head/Linear"),
    # NHWC (channels-last maps): Swin's ClassifierHead is pool → linear: exact
    Case("swin-NHWC", "swin_tiny_patch4_window7_224", (64, 64), "NHWC", True, (2, 2), "ClassifierHead/Linear",
         SWIN_TINY, img_size=64),
    # NHWC with a LayerNorm head: not exact
    Case("mambaout-NHWC-ClNormMlp", "test_mambaout", (64, 64), "NHWC", False, (2, 2), "ClNormMlpClassifierHead"),
    # NHWC, MetaFormer-style MlpHead (pool → fc → act → norm → fc): not exact
    Case("mambaout-NHWC-MlpHead", "mambaout_femto", (64, 64), "NHWC", False, (2, 2), "MlpHead/Linear"),
    # NLC+1: class token → linear: not exact; 64 px / patch 16 → 4x4
    Case("vit-cls", "test_vit", (64, 64), "NLC+1", False, (4, 4), "VisionTransformer.forward_head/Linear"),
    # NLC+1 on a non-square input (dynamic_img_size): 64x96 → 4x6
    Case("vit-cls-non-square", "test_vit", (64, 96), "NLC+1", False, (4, 6), "VisionTransformer.forward_head"),
    # NLC+0: no prefix token, average pool → linear (norm before the pool): exact
    Case("vit-avg-no-prefix", "test_vit", (64, 64), "NLC+0", True, (4, 4), "VisionTransformer.forward_head",
         dict(class_token=False, global_pool="avg", fc_norm=False)),
    # NLC+0 without a class token in a relative-position ViT (avg pool → fc_norm → linear): not exact
    Case("vit-relpos-avg", "test_vit_relpos", (64, 64), "NLC+0", False, (4, 4), "VisionTransformerRelPos",
         img_size=64),
    # NLC+1 where the one prefix token is a register token (no class token), avg pool
    Case("vit-register-avg", "test_vit2", (64, 64), "NLC+1", False, (4, 4), "VisionTransformer.forward_head"),
    # NLC+5: class token + 4 register tokens
    Case("vit-cls-4-registers", "test_vit", (64, 64), "NLC+5", False, (4, 4), "VisionTransformer.forward_head",
         dict(reg_tokens=4)),
    # NLC+1, attention-pool ('map') head over register + patch tokens
    Case("vit-map-attention-pool", "test_vit3", (64, 64), "NLC+1", False, (4, 4), "VisionTransformer.forward_head",
         img_size=64),
    # NLC+0, a distilled pair of BatchNorm → linear heads (LeViT NormLinear), averaged: exact;
    # 128 px → 8x8 tokens, subsampled twice → 2x2
    Case("levit-distilled-NormLinear", "levit_128s", (128, 128), "NLC+0", True, (2, 2), "NormLinear/Linear",
         img_size=128),
    # NLC+2: class + distillation tokens, two classifiers averaged in eval
    Case("deit-distilled", "deit_tiny_distilled_patch16_224", (64, 64), "NLC+2", False, (4, 4),
         "VisionTransformerDistilled.forward_head", DEIT_TINY, img_size=64),
]


def _create(case: Case) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = dict(case.kwargs)
    if case.img_size:
        kwargs["img_size"] = case.img_size
    return timm.create_model(case.arch, pretrained=False, **kwargs).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine spinning threads make them 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    return {hw: torch.randn(BATCH, 3, *hw, generator=generator) for hw in {c.hw for c in CASES}}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_head_kind_layout_and_exactness(case, images):
    model = _create(case)
    x = images[case.hw]
    with torch.no_grad():
        expected = model(x)
        scorer = CSRAScorer(model, lam=0, input_size=(3, *case.hw))
        assert scorer.feature_format == case.feature_format, scorer.describe()
        assert case.head in scorer.head_kind, scorer.head_kind
        assert scorer.exact is case.exact, scorer.describe()

        assert (scorer(x) - expected).abs().max() <= 1e-4  # lam=0 is the model

        out = scorer.forward_locations(x)
        num_classes = expected.shape[1]
        h, w = case.grid
        assert out.grid == case.grid
        assert out.location_logits.shape == (BATCH, num_classes, h * w)
        assert scorer.probe_locations == h * w
        assert (out.logits - expected).abs().max() <= 1e-4  # the scorer's base is the model's output
        mean_error = (out.location_logits.mean(-1) - expected).abs().max()
        if case.exact:
            assert mean_error <= 1e-4 * max(1e-3, float(expected.abs().max()))
        else:
            assert mean_error > 1e-4 * float(expected.abs().max())

        scorer.lam = 0.3
        boosted = scorer(x)
        assert boosted.shape == expected.shape and torch.isfinite(boosted).all()
        assert not torch.allclose(boosted, expected)


def _vit_location_logits(model, features: torch.Tensor, prefix: int) -> torch.Tensor:
    """What a ViT head gives one patch token: fc_norm → head, the prefix tokens skipped; (B, C, L)."""
    return model.head(model.fc_norm(features[:, prefix:])).transpose(1, 2)


@pytest.mark.parametrize("kwargs,prefix", [({}, 1), ({"reg_tokens": 4}, 5), ({"class_token": False, "global_pool": "avg"}, 0)],
                         ids=["cls", "cls+4reg", "no-prefix"])
def test_token_locations_are_the_patch_tokens_in_order(kwargs, prefix):
    """Location k is patch token k (prefix tokens dropped), row-major on the (H/16, W/16) grid."""
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, **kwargs).eval()
    x = torch.randn(BATCH, 3, 48, 80)
    with torch.no_grad():
        scorer = CSRAScorer(model, lam=0, input_size=(3, 48, 80))
        assert scorer.feature_format == f"NLC+{prefix}"
        features = model.forward_features(x)
        out = scorer.forward_locations(x)
        assert out.grid == (3, 5)
        assert torch.allclose(out.location_logits, _vit_location_logits(model, features, prefix), atol=1e-5)


def test_feature_map_locations_are_row_major_cells():
    """For a CNN, location k is feature-map cell (k // W, k % W) through the classifier."""
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False).eval()
    x = torch.randn(BATCH, 3, 64, 96)
    with torch.no_grad():
        out = CSRAScorer(model, lam=0, input_size=(3, 64, 96)).forward_locations(x)
        features = model.forward_features(x)  # (B, D, 2, 3)
        assert out.grid == (2, 3)
        cell = model.fc(features[:, :, 1, 2])  # row 1, column 2 → k = 1 * 3 + 2
        assert torch.allclose(out.location_logits[:, :, 5], cell, atol=1e-5)


def test_distilled_classifier_norm_averages_both_heads():
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=64, **DEIT_TINY).eval()
    scorer = CSRAScorer(model, lam=0.3, input_size=(3, 64, 64))
    assert scorer.normalized
    weight = (model.head.weight + model.head_dist.weight) / 2
    assert torch.allclose(scorer.cls_weight_norm, weight.norm(dim=1), rtol=1e-5)
    assert torch.allclose(scorer.cls_bias, (model.head.bias + model.head_dist.bias) / 2)


def test_exact_is_measured_relative_to_small_logits():
    """Random-init MobileNetV3 logits are ~1e-2: an absolute 1e-4 floor would call its hardswish head exact."""
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    assert not CSRAScorer(model, lam=0, input_size=(3, 64, 64)).exact
    resnet = timm.create_model("resnet10t", pretrained=False).eval()
    with torch.no_grad():  # a pool → linear head stays exact at any logit scale
        resnet.fc.weight.mul_(1e-4)
        resnet.fc.bias.zero_()
    assert CSRAScorer(resnet, lam=0, input_size=(3, 64, 64)).exact


def test_unsupported_model_says_why():
    """PiT's forward_features returns only its class token: no spatial locations are left."""
    torch.manual_seed(0)
    model = timm.create_model("pit_ti_224", pretrained=False).eval()
    with pytest.raises(UnsupportedModelError, match="no patch tokens"):
        CSRAScorer(model, lam=0.3, input_size=(3, 224, 224))


def test_unsupported_multi_branch_features():
    """CrossViT returns one token sequence per branch: no single location grid."""
    torch.manual_seed(0)
    model = timm.create_model("crossvit_tiny_240", pretrained=False).eval()
    with pytest.raises(UnsupportedModelError, match="not one tensor"):
        CSRAScorer(model, lam=0.3, input_size=(3, 240, 240))


def test_not_a_timm_classifier():
    with pytest.raises(UnsupportedModelError, match="forward_features"):
        CSRAScorer(torch.nn.Linear(3, 2), lam=0.3)



def test_token_grid_follows_a_patch_merger():
    """Tokens merged k x k after the patch embedding (Qwen-style mergers) sit on the model's own grid / k,
    even where that grid's aspect is not the input's (here 16x32 patches), so L alone would mislead."""
    from types import SimpleNamespace

    from posthoc_csra.heads import Tokens

    model = torch.nn.Module()
    model.patch_embed = SimpleNamespace(grid_size=(8, 6))  # 128x192 input, 16x32 patches
    assert Tokens(0).grid(torch.zeros(1, 12, 4), model, (128, 192)) == (4, 3)  # merged 2x2
    assert Tokens(1).grid(torch.zeros(1, 49, 4), model, (128, 192)) == (8, 6)  # unmerged, one prefix token
