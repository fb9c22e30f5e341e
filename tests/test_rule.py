import math

import pytest
import torch

from posthoc_csra import rule
from posthoc_csra import choices
from posthoc_csra.errors import InputError
from posthoc_csra.spaces import SPACES, LinearClassifier, get_space


def test_head_sets_are_the_papers():
    assert rule.HEAD_SETS[1] == (math.inf,)
    assert rule.HEAD_SETS[2] == (1, math.inf)
    assert rule.HEAD_SETS[4] == (1, 2, 4, math.inf)
    assert rule.HEAD_SETS[6] == (1, 2, 3, 4, 5, math.inf)
    assert rule.HEAD_SETS[8] == (1, 2, 3, 4, 5, 6, 7, math.inf)
    assert rule.STAT_TEMPERATURES == rule.HEAD_SETS[8]


def test_resolve_temperatures():
    assert rule.resolve_temperatures(4) == (1, 2, 4, math.inf)
    assert rule.resolve_temperatures([1]) == (1.0,)
    with pytest.raises(ValueError, match="paper head set"):
        rule.resolve_temperatures(3)
    with pytest.raises(ValueError, match="positive"):
        rule.resolve_temperatures([0])
    assert rule.parse_temperature("inf") == math.inf and rule.parse_temperature(" 2 ") == 2.0


def test_max_is_the_infinite_temperature_limit():
    s = torch.randn(3, 5, 7, dtype=torch.float64)
    big = rule.attention(s, 1e4)
    assert torch.allclose(big, rule.attention(s, math.inf), atol=1e-6)
    assert torch.allclose(rule.attention(s, math.inf), s.amax(-1))


def test_zero_temperature_limit_is_the_mean():
    s = torch.randn(2, 4, 9, dtype=torch.float64)
    assert torch.allclose(rule.attention(s, 1e-9), s.mean(-1), atol=1e-6)


def test_finite_temperature_matches_the_papers_formula():
    s = torch.randn(2, 3, 5)
    t = 3.0
    expected = torch.stack([torch.stack([(s[b, c] * torch.softmax(t * s[b, c], 0)).sum() for c in range(3)])
                            for b in range(2)])
    assert torch.allclose(rule.attention(s, t), expected, atol=1e-6)


def test_combine_is_base_plus_lambda_over_h_times_sum():
    base, s = torch.randn(2, 3), torch.randn(2, 3, 6)
    temps = rule.HEAD_SETS[4]
    terms = rule.attention_terms(s, temps)
    assert terms.shape == (2, 4, 3)
    out = rule.csra(base, s, 0.4, temps)
    assert torch.allclose(out, base + 0.1 * sum(rule.attention(s, t) for t in temps))
    assert rule.csra(base, s, 0.0, temps) is base


def test_h_heads_rank_like_the_per_head_sum():
    """H heads each adding lam*att_T to a shared base: H*base + lam*sum = H * (base + lam/H * sum)."""
    base, s = torch.randn(4, 3), torch.randn(4, 3, 5)
    temps = rule.HEAD_SETS[8]
    heads_sum = sum(base + 0.3 * rule.attention(s, t) for t in temps)
    assert torch.allclose(heads_sum / len(temps), rule.csra(base, s, 0.3, temps), atol=1e-6)


def test_spaces():
    z = torch.randn(2, 4, 3)
    classifier = LinearClassifier(torch.randn(4), torch.rand(4) + 0.5)
    s = get_space("logit").location_scores(z, classifier)
    assert torch.allclose(s, (z - classifier.bias[None, :, None]) / classifier.weight_norm[None, :, None])
    assert get_space("logit").location_scores(z) is z  # a head without a linear classifier: s = z
    p = get_space("prob").location_scores(z)
    assert torch.allclose(p.sum(1), torch.ones(2, 3))
    logits = torch.randn(2, 4)
    assert torch.allclose(get_space("prob").base(logits), logits.softmax(1))
    assert get_space("logit").base(logits) is logits
    assert get_space("logit").member_pool("sum") == "max" and get_space("prob").member_pool("sum") == "sum"
    with pytest.raises(InputError, match="space"):
        get_space("sigmoid")
    assert tuple(SPACES) == choices.SPACES


def test_prob_space_rule_is_softmax_base_plus_max_location_probability():
    logits, z = torch.randn(2, 5), torch.randn(2, 5, 4)
    space = get_space("prob")
    out = rule.combine(space.base(logits), space.attention_terms(z, (math.inf,)), 0.5)
    assert torch.allclose(out, logits.softmax(1) + 0.5 * z.softmax(1).amax(-1))


@pytest.mark.parametrize("temps", [(math.inf,), rule.HEAD_SETS[4]])
def test_logit_space_terms_are_the_papers_attention_in_logit_units(temps):
    """‖w_c‖·att_T((z − b)/‖w_c‖); at T = ∞ the shortcut max_k z − b, ties included."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4, 7, 9, generator=generator) * 5
    z[0, 0, 3] = z[0, 0, 5]  # a tie on the max
    classifier = LinearClassifier(torch.randn(7, generator=generator), torch.rand(7, generator=generator) + 0.01)
    terms = get_space("logit").attention_terms(z, temps, classifier)
    s = (z - classifier.bias[None, :, None]) / classifier.weight_norm[None, :, None]
    expected = rule.attention_terms(s, temps) * classifier.weight_norm[None, None, :]
    assert terms.shape == (4, len(temps), 7)
    assert torch.allclose(terms, expected, atol=1e-5, rtol=1e-5)
    if temps == (math.inf,):
        assert torch.equal(terms[:, 0], z.amax(-1) - classifier.bias)


def test_resolve_temperatures_reads_the_one_head_set_spelling():
    """Text names a head set (choices.HEADS_SYNTAX), never a string of characters: "4" is the paper's 4 heads,
    "T1" is T = 1 alone (the official CSRA code's MHA(num_heads=1)), 1 is T = ∞."""
    assert rule.resolve_temperatures("4") == rule.HEAD_SETS[4]
    assert rule.resolve_temperatures("T1") == (1.0,) and rule.resolve_temperatures(1) == (math.inf,)
    assert rule.resolve_temperatures("T1+inf") == rule.resolve_temperatures((1, math.inf)) == (1.0, math.inf)
    with pytest.raises(InputError, match="MHA"):
        rule.resolve_temperatures("1,inf")
