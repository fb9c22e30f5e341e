"""λ = 0 reproduces the model for every architecture family; per-location logits have the right shape."""
import math

import pytest
import timm
import torch

from posthoc_csra import CSRAScorer, UnsupportedModelError, choices, rule

# (model, larger input, exact): models with a fixed token grid are created at the larger size.
DONE_WHEN_MODELS = [
    ("resnet50", 288, True),
    ("efficientnet_b0", 288, True),
    ("mobilenetv3_large_100", 288, False),
    ("convnext_tiny", 288, False),
    ("vit_small_patch16_224", 288, False),
    ("deit_small_distilled_patch16_224", 288, False),
    ("swin_tiny_patch4_window7_224", 448, True),
    ("regnety_016", 288, True),
    ("densenet121", 288, True),
    ("eva02_tiny_patch14_336", 392, False),
]


def _create(name, img_size=None):
    torch.manual_seed(0)
    try:
        return timm.create_model(name, pretrained=False, **({"img_size": img_size} if img_size else {})).eval()
    except TypeError:
        return timm.create_model(name, pretrained=False).eval()


@pytest.mark.parametrize("name,larger,exact", DONE_WHEN_MODELS, ids=[m[0] for m in DONE_WHEN_MODELS])
def test_lambda_zero_reproduces_the_model(name, larger, exact):
    default = timm.get_pretrained_cfg(name).input_size[-1]
    model = _create(name)
    for size in (default, larger):
        if size != default and getattr(model, "patch_embed", None) is not None:
            model = _create(name, size)  # fixed token grid: timm builds the model for the size
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            expected = model(x)
            scorer = CSRAScorer(model, lam=0, input_size=(3, size, size))
            assert (scorer(x) - expected).abs().max() <= 1e-4, (name, size)
            out = scorer.forward_locations(x)
            assert (out.logits - expected).abs().max() <= 1e-4
            h, w = out.grid
            assert out.location_logits.shape == (1, expected.shape[1], h * w)
            assert scorer.exact is exact, scorer.describe()
            if exact:  # pool→linear: the mean of the per-location logits is the model's logits
                assert torch.allclose(out.location_logits.mean(-1), expected, atol=1e-3, rtol=1e-4)
            scorer.lam = 0.3
            boosted = scorer(x)
            assert boosted.shape == expected.shape and torch.isfinite(boosted).all()
            assert not torch.allclose(boosted, expected)


def test_lambda_zero_in_prob_space_is_the_models_softmax():
    model = _create("resnet18")
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(CSRAScorer(model, lam=0, space="prob")(x), model(x).softmax(1), atol=1e-6)


def test_scores_follow_the_rule_from_location_logits():
    model = _create("resnet18")
    x = torch.randn(2, 3, 96, 96)
    scorer = CSRAScorer(model, lam=0.5, heads=4)
    with torch.no_grad():
        out = scorer.forward_locations(x)
        w, b = model.fc.weight, model.fc.bias
        s = (out.location_logits - b[None, :, None]) / w.norm(dim=1)[None, :, None]
        # the paper's attention terms, written in the model's logit units (× ‖w_c‖)
        expected = out.logits + 0.5 / 4 * w.norm(dim=1) * sum(rule.attention(s, t) for t in (1, 2, 4, math.inf))
        assert torch.allclose(scorer(x), expected, atol=1e-4)
        # the logit-space scores are the normalised classifier applied at each location
        feats = model.forward_features(x).flatten(2)
        assert torch.allclose(s, torch.einsum("cd,bdl->bcl", w / w.norm(dim=1, keepdim=True), feats), atol=1e-4)


def test_statistics_hold_every_term():
    model = _create("resnet18")
    x = torch.randn(3, 3, 64, 64)
    scorer = CSRAScorer(model, lam=0.2, heads=8, space="prob")
    with torch.no_grad():
        stats = scorer.statistics(x)
        assert stats["prob_att"].shape == (3, 8, 1000)
        from_stats = rule.combine(stats["prob_base"], stats["prob_att"], 0.2)
        assert torch.allclose(from_stats, scorer(x), atol=1e-6)
        heads4 = [choices.STORED_HEADS.index(t) for t in choices.HEAD_SETS[4]]
        scorer4 = CSRAScorer(model, lam=0.2, heads=4, space="logit")
        assert torch.allclose(rule.combine(stats["logit_base"], stats["logit_att"][:, heads4], 0.2), scorer4(x),
                              atol=1e-5)


def test_one_backbone_pass_per_batch():
    model = _create("resnet18")
    calls = []
    original = model.forward_features
    model.forward_features = lambda x: calls.append(1) or original(x)
    scorer = CSRAScorer(model, lam=0.1)
    calls.clear()
    with torch.no_grad():
        scorer(torch.randn(4, 3, 64, 64))
        scorer.statistics(torch.randn(4, 3, 64, 64))
    assert len(calls) == 2


def test_unsupported_model_says_why():
    class Pooled(torch.nn.Module):
        def forward_features(self, x):
            return x.mean((2, 3))

        def forward_head(self, x):
            return x

    with pytest.raises(UnsupportedModelError, match="already pooled"):
        CSRAScorer(Pooled(), input_size=(3, 8, 8))
    with pytest.raises(UnsupportedModelError, match="forward_features"):
        CSRAScorer(torch.nn.Linear(3, 3))


def test_bad_options():
    model = _create("resnet18")
    with pytest.raises(ValueError, match="space"):
        CSRAScorer(model, space="sigmoid")
    with pytest.raises(ValueError, match="head set"):
        CSRAScorer(model, heads=5)


def test_prefix_tokens_without_a_declared_count_come_from_the_models_grid():
    model = _create("coat_lite_tiny")  # a class token, but no num_prefix_tokens attribute
    scorer = CSRAScorer(model, lam=0)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = scorer.forward_locations(x)
        assert scorer.feature_format == "NLC+1" and out.grid == (7, 7)
        assert (scorer(x) - model(x)).abs().max() <= 1e-4


# Models built at a size other than their pretrained_cfg's: timm does not update the cfg.
OTHER_SIZE_MODELS = [("vit_tiny_patch16_224", 256), ("deit_tiny_distilled_patch16_224", 256),
                     ("swin_tiny_patch4_window7_224", 256), ("eva02_tiny_patch14_224", 252)]


@pytest.mark.parametrize("name,size", OTHER_SIZE_MODELS, ids=[m[0] for m in OTHER_SIZE_MODELS])
def test_models_built_at_another_size_need_no_input_size(name, size):
    model = _create(name, size)
    assert tuple(model.pretrained_cfg["input_size"][-2:]) != (size, size)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        scorer = CSRAScorer(model, lam=0)  # no input_size: the probe uses the size the model was built for
        assert (scorer(x) - model(x)).abs().max() <= 1e-4
        scorer.lam = 0.2
        assert torch.isfinite(scorer(x)).all()


@pytest.mark.parametrize("pool", ["avgmax", "max"])
def test_pooling_baselines_equal_timm_with_that_global_pool(pool):
    """avgmax-pool / max-pool rows are what timm computes with global_pool='avgmax' / 'max', same weights."""
    model = _create("resnet18")
    other = timm.create_model("resnet18", pretrained=False, global_pool=pool).eval()
    other.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        stats = CSRAScorer(model).statistics(x)
        expected = other(x)
        assert torch.allclose(stats[f"logit@{pool}-pool"], expected, atol=1e-5)
        assert torch.allclose(stats[f"prob@{pool}-pool"], expected.softmax(1), atol=1e-6)
        method = CSRAScorer(model, method=f"{pool}-pool", space="prob")
        assert torch.allclose(method(x), expected.softmax(1), atol=1e-6)


def test_test_time_pool_equals_timms_head_and_is_the_model_at_the_native_size():
    from timm.layers import TestTimePoolHead

    model = _create("resnet18")
    reference = _create("resnet18")
    reference.load_state_dict(model.state_dict())
    ttp = TestTimePoolHead(reference, original_pool=reference.pretrained_cfg["pool_size"]).eval()
    scorer = CSRAScorer(model, method="test-time-pool")
    with torch.no_grad():
        big = torch.randn(2, 3, 320, 320)
        assert torch.allclose(scorer(big), ttp(big), atol=1e-5)
        native = torch.randn(2, 3, 224, 224)
        assert torch.allclose(scorer(native), model(native), atol=1e-5)


def test_baselines_say_why_they_do_not_apply_to_token_heads():
    model = _create("vit_tiny_patch16_224")
    scorer = CSRAScorer(model)
    notes = scorer.baseline_notes()
    assert all("NLC" in note for note in notes.values())
    with torch.no_grad():
        stats = scorer.statistics(torch.randn(1, 3, 224, 224))
    assert torch.isnan(stats["logit@max-pool"]).all()
    with pytest.raises(UnsupportedModelError, match="max-pool"):
        CSRAScorer(model, method="max-pool")


def test_lambda_must_be_finite_and_non_negative():
    model = _create("resnet18")
    for bad in (float("nan"), float("inf"), -1):
        with pytest.raises(ValueError, match="λ"):
            CSRAScorer(model, lam=bad)
