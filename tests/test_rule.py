import math

import pytest
import torch

from posthoc_csra import attention, rule
from posthoc_csra import choices
from posthoc_csra.errors import InputError
from posthoc_csra.spaces import SPACES, LinearClassifier, get_space


def test_head_sets_are_the_papers():
    assert choices.HEAD_SETS[1] == (math.inf,)
    assert choices.HEAD_SETS[2] == (1, math.inf)
    assert choices.HEAD_SETS[4] == (1, 2, 4, math.inf)
    assert choices.HEAD_SETS[6] == (1, 2, 3, 4, 5, math.inf)
    assert choices.HEAD_SETS[8] == (1, 2, 3, 4, 5, 6, 7, math.inf)
    assert choices.STORED_HEADS == choices.HEAD_SETS[8]


def test_resolve_temperatures():
    assert choices.resolve_heads(4) == (1, 2, 4, math.inf)
    assert choices.resolve_heads([1]) == (1.0,)
    with pytest.raises(ValueError, match="paper head set"):
        choices.resolve_heads(3)
    with pytest.raises(ValueError, match="positive"):
        choices.resolve_heads([0])
    assert attention.parse_head("inf") == math.inf and attention.parse_head(" 2 ") == 2.0


def test_max_is_the_infinite_temperature_limit():
    # max_k s_k - att_T = sum_k p_k (max - s_k) <= (L - 1) / (e T), since x exp(-T x) <= 1 / (e T):
    # a bound that holds for any scores, so the check cannot flake on near-ties.
    generator = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, 7, dtype=torch.float64, generator=generator)
    exact_max = rule.attention(s, math.inf)
    assert torch.equal(exact_max, s.amax(-1))
    for temperature in (1e2, 1e4):
        gap = exact_max - rule.attention(s, temperature)
        assert (gap >= -1e-12).all()
        assert (gap <= (s.shape[-1] - 1) / (math.e * temperature) + 1e-12).all()


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
    temps = choices.HEAD_SETS[4]
    terms = rule.attention_terms(s, temps)
    assert terms.shape == (2, 4, 3)
    out = rule.csra(base, s, 0.4, temps)
    assert torch.allclose(out, base + 0.1 * sum(rule.attention(s, t) for t in temps))
    assert rule.csra(base, s, 0.0, temps) is base


def test_h_heads_rank_like_the_per_head_sum():
    """H heads each adding lam*att_T to a shared base: H*base + lam*sum = H * (base + lam/H * sum)."""
    base, s = torch.randn(4, 3), torch.randn(4, 3, 5)
    temps = choices.HEAD_SETS[8]
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


@pytest.mark.parametrize("temps", [(math.inf,), choices.HEAD_SETS[4], choices.HEAD_SETS[8]])
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
    assert choices.resolve_heads("4") == choices.HEAD_SETS[4]
    assert choices.resolve_heads("T1") == (1.0,) and choices.resolve_heads(1) == (math.inf,)
    assert choices.resolve_heads("T1+inf") == choices.resolve_heads((1, math.inf)) == (1.0, math.inf)
    with pytest.raises(InputError, match="MHA"):
        choices.resolve_heads("1,inf")


# ---- how the terms are computed: every path is the formula up to float rounding, row by row

def _formula64(s, temps, scale=None):
    """The paper's formula in float64: Σ_k s_k·softmax(T·s)_k (T·scale_c per class), max at T = ∞."""
    s = s.double()
    out = []
    for t in map(float, temps):  # a softmax head is its temperature, the max head inf
        if math.isinf(t):
            out.append(s.amax(-1))
            continue
        k = t if scale is None else t * scale.double().view(1, -1, 1)
        out.append((s * torch.softmax(s * k, dim=-1)).sum(-1))
    return torch.stack(out, 1)


def _scores(kind, shape=(3, 40, 37), seed=0):
    """Per-location scores as the spaces make them: probabilities over classes (stored (B, L, C), viewed
    (B, C, L)) or wide-spread logits (weights of far locations underflow fp32 at T = 7)."""
    g = torch.Generator().manual_seed(seed)
    b, c, l = shape
    z = torch.randn(b, l, c, generator=g) * (3 if kind == "prob" else 30)
    return z.softmax(-1).transpose(1, 2) if kind == "prob" else z.transpose(1, 2)


TEMPS = choices.HEAD_SETS[8] + (0.5, 2.5, 30.0)


@pytest.mark.parametrize("kind", ["prob", "logit"])
def test_every_path_is_the_formula_up_to_rounding(kind):
    s = _scores(kind)
    expected = _formula64(s, TEMPS)
    tol = 1e-6 * float(s.abs().max())
    fast = rule.attention_terms(s, TEMPS, bounded=kind == "prob")  # the CPU path
    assert fast.dtype == torch.float32 and fast.shape == (3, len(TEMPS), 40)
    assert (fast.double() - expected).abs().max() <= tol
    formula = torch.stack(attention._formula_terms(s, TEMPS[:7], None), 1)  # what a GPU or an export runs
    assert (formula.double() - expected[:, :7]).abs().max() <= tol
    for layout in (s, s.contiguous()):  # stored (B, L, C) and viewed (B, C, L), or stored (B, C, L)
        for bounded in {False, kind == "prob"}:  # probabilities with and without the max subtracted
            terms = torch.stack(attention._exp_terms(layout, TEMPS[:7], None, bounded), 1)
            assert (terms.double() - expected[:, :7]).abs().max() <= tol, (layout.stride(), bounded)
    assert torch.equal(rule.attention_terms(s, (math.inf,))[:, 0], s.amax(-1))  # the max is exact


def test_far_locations_weigh_nothing_and_stay_normal_floats():
    """Logits 40 apart at T = 7: the far weights (e^-280) are raised to e^-87, a normal float, and the term is
    still the nearest location's up to rounding."""
    s = torch.tensor([[[10.0, -30.0, -29.0, 9.0]]])
    terms = attention._exp_terms(s, [7.0], None, bounded=False)[0]
    assert terms.item() == pytest.approx(_formula64(s, [7.0]).item(), rel=1e-7)
    assert torch.exp(torch.tensor(attention.MIN_EXPONENT)) >= torch.finfo(torch.float32).tiny


def test_probabilities_at_a_high_temperature_stay_finite():
    """Unshifted weights exp(T·s) of probabilities near 1 overflow a sum of 300 at T = 87; above
    MAX_UNSHIFTED the max is subtracted as for any scores."""
    s = torch.full((1, 2, 300), 0.999)
    s[0, :, 0] = 1.0
    for t in (attention.MAX_UNSHIFTED, 87.0, 500.0):
        terms = attention._exp_terms(s, [t], None, bounded=True)[0]
        assert torch.isfinite(terms).all() and terms.double().sub(_formula64(s, [t])[:, 0]).abs().max() <= 1e-6, t


def test_per_class_temperature_scale():
    s, scale = _scores("logit"), torch.rand(40, generator=torch.Generator().manual_seed(1)) + 0.05
    terms = rule.attention_terms(s, choices.HEAD_SETS[8], scale=scale)
    assert (terms.double() - _formula64(s, choices.HEAD_SETS[8], scale)).abs().max() <= 1e-6 * float(s.abs().max())
    formula = torch.stack(attention._formula_terms(s, choices.HEAD_SETS[8][:7], scale), 1)
    assert (formula - terms[:, :7]).abs().max() <= 1e-6 * float(s.abs().max())


@pytest.mark.parametrize("kind", ["prob", "logit", "scaled logit"])
def test_a_rows_terms_do_not_depend_on_the_batch_or_the_block_size(kind, monkeypatch):
    """Bit for bit: a chunk of a benchmark computes the same statistics in any batch, on any executor."""
    s = _scores(kind.split()[-1], (6, 50, 49))
    bounded = kind == "prob"
    scale = torch.rand(50, generator=torch.Generator().manual_seed(2)) + 0.05 if kind == "scaled logit" else None

    def terms(x, classes=slice(None)):
        return rule.attention_terms(x, TEMPS, bounded=bounded, scale=None if scale is None else scale[classes])

    full = terms(s)
    assert torch.equal(full[2:5], terms(s[2:5]))
    assert torch.equal(full[4:5], terms(s[4:5]))
    assert torch.equal(full[:, :, 7:30], terms(s[:, 7:30], slice(7, 30)))
    per_image = len(TEMPS) * 50 * 49  # (temperature, class, location) values of one image
    # blocks of images; of classes (equal parts of 50: 25, 17, 13 classes); of one class
    for block in (per_image * 4, per_image, per_image - 1, per_image // 3, per_image // 4, 1):
        monkeypatch.setattr(attention, "BLOCK_ELEMENTS", block)
        assert torch.equal(full, terms(s)), block


def test_the_max_is_computed_once_and_shared_bit_for_bit():
    """A head set with ∞ computes the max over L once: the max head's term and the softmax path's shift."""
    s = _scores("logit")
    together = rule.attention_terms(s, (1.0, 2.0, math.inf))
    assert torch.equal(together[:, 2], s.amax(-1))
    assert torch.equal(together[:, :2], rule.attention_terms(s, (1.0, 2.0)))


def test_no_locations_or_no_rows():
    """Empty inputs give the formula's empty sums (0 with no locations), not a division by zero."""
    assert torch.equal(rule.attention_terms(torch.empty(2, 3, 0), (1.0, 2.0)), torch.zeros(2, 2, 3))
    assert rule.attention_terms(torch.empty(0, 3, 5), (1.0, 2.0)).shape == (0, 2, 3)
    assert rule.attention_terms(torch.empty(2, 0, 5), (1.0, math.inf)).shape == (2, 2, 0)


def test_terms_stay_fp32_under_autocast():
    s = _scores("logit")
    expected = rule.attention_terms(s, choices.HEAD_SETS[8])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = rule.attention_terms(s, choices.HEAD_SETS[8])
    assert terms.dtype == torch.float32 and torch.equal(terms, expected)


@pytest.mark.parametrize("kind", ["prob", "logit"])
def test_fast_paths_rank_every_class_like_the_formula(kind):
    """In float64 (no ties from rounding) every class ranks the images exactly as the formula does."""
    s = _scores(kind, (64, 20, 49), seed=3).double()
    base = torch.randn(64, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    fast = rule.combine(base, rule.attention_terms(s, choices.HEAD_SETS[8], bounded=kind == "prob"), 0.7)
    formula = rule.combine(base, _formula64(s, choices.HEAD_SETS[8]), 0.7)
    assert torch.equal(fast.argsort(0), formula.argsort(0))


@pytest.mark.parametrize("space", ["logit", "prob"])
def test_location_statistics_are_the_mean_and_the_terms(space):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, 49, 12, generator=g).transpose(1, 2) * 4  # stored (B, L, C), as the heads give them
    classifier = LinearClassifier(torch.randn(12, generator=g), torch.rand(12, generator=g) + 0.1)
    sp = get_space(space)
    mean, terms = sp.location_statistics(z, choices.STORED_HEADS, classifier)
    s = sp.location_scores(z, classifier)
    assert torch.allclose(mean, s.mean(-1), atol=1e-6, rtol=1e-5)
    assert torch.allclose(terms, sp.attention_terms(z, choices.STORED_HEADS, classifier), atol=0, rtol=0)
    if space == "prob":
        assert torch.allclose(s, z.softmax(1), atol=1e-6)  # over classes


@pytest.mark.parametrize("space", ["logit", "prob"])
def test_location_scores_formed_a_chunk_of_images_at_a_time_give_the_same_bits(space, monkeypatch):
    """Attention terms form the location scores a few whole images at a time (``spaces.CHUNK_ELEMENTS``): the
    numbers are those of the whole batch at once, bit for bit (and the cache's statistics, formed per batch)."""
    from posthoc_csra import spaces

    g = torch.Generator().manual_seed(6)
    z = torch.randn(7, 49, 12, generator=g).transpose(1, 2) * 4
    classifier = LinearClassifier(torch.randn(12, generator=g), torch.rand(12, generator=g) + 0.1)
    sp, heads = get_space(space), choices.STORED_HEADS + ("top5",)
    results = {}
    for chunk in (1 << 62, 1, 2 * 12 * 49):  # the whole batch, one image, two images per chunk
        monkeypatch.setattr(spaces, "CHUNK_ELEMENTS", chunk)
        assert len(spaces.image_chunks(z)) == {1 << 62: 1, 1: 7, 2 * 12 * 49: 4}[chunk]
        results[chunk] = (*sp.location_statistics(z, heads, classifier), sp.attention_terms(z, heads, classifier))
    for chunk in (1, 2 * 12 * 49):
        assert all(torch.equal(a, b) for a, b in zip(results[chunk], results[1 << 62])), chunk


def test_attention_terms_follow_autograd_when_scores_require_grad():
    """A scorer called outside torch.no_grad (parameters require grad) gets the same terms and a graph."""
    import torch

    from posthoc_csra.rule import attention_terms

    s = torch.rand(2, 5, 9, requires_grad=True)
    with torch.no_grad():
        expected = attention_terms(s, (1.0, 2.0, math.inf), bounded=True)
    terms = attention_terms(s, (1.0, 2.0, math.inf), bounded=True)
    torch.testing.assert_close(terms, expected, rtol=1e-5, atol=1e-6)
    terms.sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
