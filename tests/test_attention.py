"""The top-k attention head (``attention.TopKHead``): the mean of the k highest location scores, added as one
registered class and usable from every command with no other edit."""
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from posthoc_csra import choices, rule
from posthoc_csra.attention import HEAD_KINDS, TopKHead, head_syntax_help, parse_head
from posthoc_csra.errors import InputError
from posthoc_csra.spaces import LinearClassifier, get_space


def _scores(shape=(3, 7, 25), seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


def _top_mean(s, k):
    """Independent: numpy's sort, the k largest, their mean (float64)."""
    values = np.sort(s.double().numpy(), axis=-1)[..., ::-1]
    return torch.from_numpy(values[..., :k].mean(axis=-1).copy())


@pytest.mark.parametrize("token, k", [("top1", 1), ("top3", 3), ("top0.1", 3), ("top0.5", 13), ("top0.01", 1),
                                      ("top40", 25)])
def test_top_k_is_the_mean_of_the_k_highest_locations(token, k):
    s = _scores()
    head = parse_head(token)
    assert isinstance(head, TopKHead) and head.locations(25) == k
    assert torch.allclose(rule.attention(s, head).double(), _top_mean(s, k), atol=1e-6)
    assert torch.allclose(rule.attention(s, head), torch.topk(s, k, dim=-1).values.mean(-1), atol=1e-6)


def test_top1_is_the_max_and_top_l_the_mean():
    s = _scores()
    assert torch.equal(rule.attention(s, "top1"), rule.attention(s, math.inf))
    assert torch.allclose(rule.attention(s, "top25"), s.mean(-1), atol=1e-6)
    assert torch.allclose(rule.attention(s, "top0.99"), s.mean(-1), atol=1e-6)  # round(0.99·25) = 25


def test_fraction_rounds_half_up_and_takes_at_least_one_location():
    head = TopKHead(0.1)
    assert [head.locations(n) for n in (1, 4, 5, 14, 15, 25, 30, 49)] == [1, 1, 1, 1, 2, 3, 3, 5]
    assert TopKHead(0.5).locations(5) == 3 and TopKHead(0.3).locations(10) == 3  # 2.5 → 3; 3.0000000000000004 → 3


def test_mixed_head_sets_compute_each_kind_in_its_own_call():
    s = _scores(seed=1)
    terms = rule.attention_terms(s, choices.resolve_heads("T1+top0.1+inf+top3"))
    expected = [rule.attention(s, 1.0), _top_mean(s, 3).float(), s.amax(-1), _top_mean(s, 3).float()]
    for i, e in enumerate(expected):
        assert torch.allclose(terms[:, i], e, atol=1e-6), i


def test_logit_space_top_k_is_in_logit_units():
    """‖w_c‖·mean_topk((z − b_c)/‖w_c‖) = mean_topk(z) − b_c: the per-class scale does not change the top k."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 6, 16, generator=g) * 4
    classifier = LinearClassifier(torch.randn(6, generator=g), torch.rand(6, generator=g) + 0.1)
    space = get_space("logit")
    terms = space.attention_terms(z, (TopKHead(4),), classifier)[:, 0]
    s = space.location_scores(z, classifier)
    assert torch.allclose(terms, _top_mean(s, 4).float() * classifier.weight_norm, atol=1e-5)


def test_lam_zero_is_still_the_model():
    base = torch.randn(3, 7)
    assert rule.csra(base, _scores(), 0.0, choices.resolve_heads("Ttop0.1")) is base


@pytest.mark.parametrize("text, written, cell", [("T1+top0.1", "T1+top0.1", "1,top0.1"), ("top5", "top5", "top5"),
                                                 ("Ttop5.0+inf", "top5+inf", "top5,inf"),
                                                 ("top0.25+2", "top0.25+2", "top0.25,2")])
def test_top_k_spelling_round_trips(text, written, cell):
    heads = choices.parse_head_set(text)
    assert choices.format_head_set(heads) == written and choices.parse_head_set(written) == heads
    assert choices.format_temperatures(heads) == cell and choices.parse_temperatures(cell) == heads
    card_heads = json.loads(json.dumps([h.card_value for h in heads]))
    assert choices.resolve_heads(card_heads) == heads
    assert "top" in choices.describe_temperatures(heads)


@pytest.mark.parametrize("bad", ["top0", "top1.5", "top-1", "topx", "top", "T1+top2.5"])
def test_bad_top_k_says_how_to_write_one(bad):
    with pytest.raises(InputError, match="top<k>"):
        choices.parse_head_set(bad)


def test_top_k_is_registered_and_documented():
    assert HEAD_KINDS["topk"] is TopKHead
    assert "top<k>" in head_syntax_help()  # in every --heads help and head-set error
    assert TopKHead(5) not in choices.STORED_HEADS  # computed when asked, never stored by default
    assert choices.extra_heads(["T1+top0.1", 4, "top0.1+top5"]) == (TopKHead(0.1), TopKHead(5))


def test_score_with_a_top_k_head(tmp_path):
    from posthoc_csra.cli import main

    Image.new("RGB", (80, 60), (200, 10, 10)).save(tmp_path / "red.png")
    out = tmp_path / "s.csv"
    result = CliRunner().invoke(main, ["-q", "score", str(tmp_path / "red.png"), "-m", "test_vit", "--random-weights",
                                       "--img-size", "64", "--heads", "T1+top0.1", "--lam", "0.5", "-o", str(out),
                                       "--no-progress", "--workers", "0"])
    assert result.exit_code == 0, result.output
    import pandas as pd

    table = pd.read_csv(out)
    assert (table["temperatures"] == "1,top0.1").all()
    assert "T={1,top0.1}" in result.output


def test_bench_with_a_top_k_head_stores_it_under_its_own_key(tmp_path):
    from test_bench import _imagenet_dir
    from test_cache import IMG

    from posthoc_csra.bench import run_bench
    from posthoc_csra.options import EvalOptions, LoadOptions, ModelSource

    spec = _imagenet_dir(tmp_path, n=4)
    kw = dict(source=ModelSource(pretrained=False), cache_dir=tmp_path / "cache", img_sizes=[IMG],
              loading=LoadOptions(workers=0, batch_size=4, chunk_size=4, progress=False))
    plain = run_bench("test_efficientnet", spec, EvalOptions(lams="0,0.5", heads="1"), **kw)
    table = run_bench("test_efficientnet", spec, EvalOptions(lams="0,0.5", heads="1,T1+top0.1,top1"), **kw)
    assert table["error"].isna().all() and not table["cached"].any()  # the extra heads: a new cache key
    csra = table[table["method"] == "csra"]
    assert set(csra["temperatures"]) == {"inf", "1,top0.1", "top1"}
    key = ["space", "temperatures", "lam"]
    rows = csra.set_index(key)["mAP"]
    for space in ("logit", "prob"):  # top1 is the max: the same rows as heads 1; the default heads unchanged
        assert rows.loc[(space, "top1", 0.5)] == rows.loc[(space, "inf", 0.5)]
        assert rows.loc[(space, "inf", 0.5)] == plain[plain["method"] == "csra"].set_index(key)["mAP"].loc[
            (space, "inf", 0.5)]
    again = run_bench("test_efficientnet", spec, EvalOptions(lams="0", heads="top1,top0.1"), **kw)
    assert again["cached"].all()  # the same extra heads in any order and sets: the same key
    stores = sorted(p.name for p in (tmp_path / "cache" / "stats").iterdir())
    assert len(stores) == 2  # the default key and the key with top0.1 and top1


def _tiny_scorer(heads):
    from posthoc_csra.models import load_model
    from posthoc_csra.scorer import CSRAScorer

    torch.manual_seed(0)
    net = load_model("test_efficientnet", pretrained=False)
    return CSRAScorer(net, lam=0.5, heads=heads, space="prob", input_size=(3, 64, 64))


def test_a_card_keeps_a_top_k_head(tmp_path):
    from posthoc_csra import cards

    rule_ = cards.Rule("csra", "prob", choices.resolve_heads("T1+top0.1"), 0.5)
    card = cards.ScorerCard(
        model="test_efficientnet", num_classes=1000, weights=cards.Weights("random", "x"),
        preprocessing=cards.Preprocessing(64, True, 1.0, "center", "bicubic", (0.5,) * 3, (0.5,) * 3), rule=rule_,
        chosen_with=cards.Choice("d", "f", 50.0, 40.0), timm="test")
    path = cards.write_card(card, tmp_path / "c.json")
    assert json.loads(path.read_text())["heads"] == [1.0, "top0.1"]
    assert cards.read_card(path) == card and "T={1,top0.1}" in card.describe()


def test_export_traces_a_top_k_head(tmp_path):
    from posthoc_csra.export import export_scorer, load_program

    scorer = _tiny_scorer("T1+top0.1+inf")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    result = export_scorer(scorer, x, tmp_path / "s.pt2", {"heads": [h.card_value for h in scorer.heads]})
    module, meta = load_program(tmp_path / "s.pt2")
    assert result.check.max_abs_diff <= 1e-5 and torch.allclose(module(x[:1]), scorer(x[:1]), atol=1e-5)
    assert choices.resolve_heads(meta["heads"]) == scorer.heads


def test_explain_draws_no_map_for_a_top_k_head(tmp_path):
    from posthoc_csra.explain import explain_image, render
    from posthoc_csra.options import ModelSource, RuleOptions

    Image.new("RGB", (80, 60), (200, 10, 10)).save(tmp_path / "red.png")
    result = explain_image(tmp_path / "red.png", "test_efficientnet", RuleOptions(heads="T1+top0.1"),
                           source=ModelSource(pretrained=False), img_size=64)
    assert list(result.attention) == [1.0]  # the softmax head's weights; top-k has no map
    assert render(result, tmp_path / "m.png").is_file()
