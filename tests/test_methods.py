"""The method registry: the scorer, the statistics, evaluation and cards ask the registered objects, so a new
method registered in ``methods.METHODS`` works everywhere with no other edit (no if-chains over names)."""
import numpy as np
import pytest
import timm
import torch

from posthoc_csra import bench
from posthoc_csra.baselines import BASELINES
from posthoc_csra.errors import InputError
from posthoc_csra.evaluation import evaluate_stats, method_scores
from posthoc_csra.methods import METHODS, Method
from posthoc_csra.options import EvalOptions
from posthoc_csra.scorer import CSRAScorer


class MeanOfLocations(Method):
    """A toy method for the test: the plain mean of the per-location logits (for a pool→linear head, the
    model's logits), written from the definition, not from the code under test."""

    name = "location-mean"
    own_statistic = True

    def logits(self, scorer, out):
        return out.location_logits.float().mean(-1)

    def stat_key(self, space):
        return f"{space}@{self.name}"


@pytest.fixture
def with_toy_method(monkeypatch):
    toy = MeanOfLocations()
    monkeypatch.setitem(METHODS, toy.name, toy)
    return toy


def _scorer(**kw):
    torch.manual_seed(0)
    return CSRAScorer(timm.create_model("resnet18", pretrained=False, num_classes=6).eval(), input_size=(3, 64, 64),
                      **kw)


def test_registry_order_and_names():
    assert list(METHODS)[:2] == ["model", "csra"] and list(METHODS)[2:] == list(BASELINES)
    assert [m.name for m in METHODS.values()] == list(METHODS)
    assert [m for m in METHODS.values() if m.takes_rule] == [METHODS["csra"]]
    assert METHODS["model"].simplicity < METHODS["csra"].simplicity < METHODS["max-pool"].simplicity


def test_a_registered_method_scores_live_and_from_statistics(with_toy_method):
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        scorer = _scorer(method="location-mean", space="prob")
        live = scorer(x)
        out = scorer.forward_locations(x)
        expected = torch.softmax(out.location_logits.mean(-1), -1)  # the toy's definition, in prob space
        assert torch.allclose(live, expected, atol=1e-6)
        stats = {k: v.numpy() for k, v in _scorer().statistics(x).items()}
    # the statistics hold what the method declares, and evaluation ranks it without knowing its name
    assert stats["prob@location-mean"].shape == (3, 6)
    assert np.allclose(method_scores(stats, "prob", "location-mean"), expected.numpy(), atol=1e-6)
    targets = np.eye(3, 6, dtype=np.uint8)
    df = evaluate_stats(stats, targets, np.zeros_like(targets, bool), EvalOptions([0.1], [1], ["logit"]))
    assert list(dict.fromkeys(df["method"])) == list(METHODS)  # table order = registry order, the toy last
    # the CLI's / cards' method lists take it
    assert bench.parse_methods("model,location-mean") == ("model", "location-mean")


def test_unknown_and_unavailable_methods_are_refused():
    with pytest.raises(InputError, match=r"unknown method 'nope'; choose one of model, csra, max-pool"):
        _scorer(method="nope")
    with pytest.raises(InputError, match="unknown method 'nope'"):
        method_scores({"logit_base": np.zeros((1, 6))}, "logit", "nope")
    with pytest.raises(InputError, match="bad method list"):
        bench.parse_methods("model,nope")


def test_model_and_csra_at_lambda_zero_skip_the_location_path():
    """λ = 0 and the model itself run the model's own forward (no per-location head)."""
    assert not METHODS["model"].needs_locations(0.5) and not METHODS["csra"].needs_locations(0.0)
    assert METHODS["csra"].needs_locations(0.1) and METHODS["max-pool"].needs_locations(0.0)
    x = torch.randn(2, 3, 64, 64)
    scorer = _scorer(lam=0.0)
    with torch.no_grad():
        assert torch.equal(scorer(x), scorer.model(x))
        assert torch.equal(_scorer(method="model", lam=0.7)(x), scorer.model(x))
