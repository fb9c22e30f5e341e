"""The real-weights case of an approximate per-location head: tf_mobilenetv3_small_100 from ../shared
(global pool → conv_head 576→1024 + hardswish → classifier, so not pool→linear)."""
import pytest
import torch

from posthoc_csra import CSRAScorer
from posthoc_csra.prepare import data_transform
from posthoc_csra.images import load_rgb
from posthoc_csra.models import load_model

NAME = "tf_mobilenetv3_small_100"


@pytest.fixture(scope="module")
def model_and_images(shared):
    model = load_model(NAME, checkpoint=shared / "weights" / "manifest.json")
    photos = sorted(p for p in (shared / "data" / "photos").iterdir() if p.suffix in (".jpg", ".bmp"))[:6]
    assert len(photos) >= 4, "the shared photos are missing"
    transform, _ = data_transform(model, full_frame=True)
    x = torch.stack([transform(load_rgb(p)) for p in photos])
    return model, x


@pytest.mark.parametrize("space", ["logit", "prob"])
@pytest.mark.parametrize("heads", [1, 4, "T1"])
def test_lambda_zero_is_the_model_exactly_with_real_weights(model_and_images, space, heads):
    model, x = model_and_images
    scorer = CSRAScorer(model, lam=0.0, heads=heads, space=space)
    assert scorer.exact is False  # an approximation: the tool says so
    with torch.no_grad():
        logits = model(x)
        expected = logits if space == "logit" else logits.softmax(-1)
        assert torch.equal(scorer(x), expected)
        # and the statistics the benchmark caches hold the model's own output as the base
        stats = scorer.statistics(x)
    assert torch.equal(stats["logits"], logits.float())


def test_the_per_location_mean_is_not_the_model(model_and_images):
    """What exact=False means on real weights: the mean of the per-location logits differs from the logits,
    while λ > 0 changes the scores (so the λ = 0 test above could fail)."""
    model, x = model_and_images
    scorer = CSRAScorer(model, lam=0.1, heads=1, space="logit")
    with torch.no_grad():
        logits = model(x)
        mean = scorer.location_logits(x).mean(-1)
        assert (mean - logits).abs().max() > 0.5
        assert not torch.equal(scorer(x), logits)
