"""The paired bootstrap of mAP differences, on constructed cases whose intervals are known."""
import itertools

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from posthoc_csra.options import EvalOptions
from posthoc_csra.bootstrap import Interval, Resamples, interval, paired_interval, resample_indices


def _data(seed, n=40, c=6, decimals=1):
    rng = np.random.default_rng(seed)
    targets = rng.random((n, c)) < 0.3
    targets[:, 0] = True  # positive in every image: never counted
    targets[:, 1] = False  # no positive: never counted
    ignore = rng.random((n, c)) < 0.1
    def scores():
        return np.round(targets + rng.standard_normal((n, c)), decimals).astype(np.float32)  # ties
    return targets, ignore, scores(), scores()


def _sklearn_map(scores, targets, ignore, rows):
    """An independent reference: mAP (%) of the resampled rows, one sklearn call per counted class."""
    aps = []
    for c in range(scores.shape[1]):
        keep = ~ignore[rows, c]
        y, s = targets[rows, c][keep], scores[rows, c][keep]
        if y.any() and not y.all():  # what metrics.ranked_classes ranks
            aps.append(average_precision_score(y, s))
    return 100 * np.mean(aps)


def test_every_resample_matches_a_straightforward_sklearn_loop():
    targets, ignore, a, b = _data(0)
    rs = Resamples(targets, ignore, resamples=60, seed=3, block_entries=500)  # several blocks
    assert rs.block < rs.resamples
    x, y = rs.score(a), rs.score(b)
    for j, rows in enumerate(rs.indices):
        ref_a, ref_b = _sklearn_map(a, targets, ignore, rows), _sklearn_map(b, targets, ignore, rows)
        assert x.resampled[j] == pytest.approx(ref_a, abs=1e-9)
        assert x.resampled[j] - y.resampled[j] == pytest.approx(ref_a - ref_b, abs=1e-9)
    every = np.arange(len(targets))
    assert x.map == pytest.approx(_sklearn_map(a, targets, ignore, every), abs=1e-9)


def test_identical_scores_give_exactly_zero():
    targets, ignore, a, _ = _data(1)
    got = paired_interval(a, a.copy(), targets, ignore, resamples=200)
    assert (got.delta, got.lo, got.hi) == (0.0, 0.0, 0.0)
    assert got.verdict == "tie" and got.resamples == 200


def test_a_copy_worse_on_every_resample_lies_above_zero():
    rng = np.random.default_rng(2)
    targets = rng.random((50, 4)) < 0.4
    perfect = targets + 0.01 * rng.random(targets.shape)  # every positive above every negative: AP 1
    reversed_ = -perfect  # every positive below every negative: AP < 1 wherever a class is counted
    rs = Resamples(targets, resamples=1000, seed=0)
    x, y = rs.score(perfect), rs.score(reversed_)
    assert np.all(x.resampled == 100) and np.all(x.resampled - y.resampled > 0)
    got = interval(x, y)
    assert got.lo > 0 and got.verdict == "win" and got.lo <= got.delta <= got.hi
    assert interval(y, x).verdict == "loss"


def test_exact_bootstrap_distribution_by_enumeration():
    # 3 images, one class: a ranks both positives first; b ranks the negative first, positives tied
    # below it. A resample counts when it holds the negative k ∈ {1, 2} times (18 of the 27); then
    # AP(a) = 1 and AP(b) = (3 − k)/3, so Δ = 1/3 on 12 resamples (k = 1) and 2/3 on 6 (k = 2).
    targets = np.array([[1], [0], [1]])
    a, b = np.array([[2.0], [0.0], [1.0]]), np.array([[0.0], [1.0], [0.0]])
    every = np.array(list(itertools.product(range(3), repeat=3)))
    rs = Resamples(targets, indices=every)
    x, y = rs.score(a), rs.score(b)
    k = (every == 1).sum(1)
    want = np.where((k == 1) | (k == 2), 100 * k / 3, np.nan)
    np.testing.assert_allclose(x.resampled - y.resampled, want, atol=1e-12)
    got = interval(x, y)
    assert got.resamples == 18
    assert got.delta == pytest.approx(100 / 3)  # the images themselves: k = 1
    assert (got.lo, got.hi) == (pytest.approx(100 / 3), pytest.approx(200 / 3))


def test_seeded_and_deterministic():
    targets, ignore, a, b = _data(4)
    first = paired_interval(a, b, targets, ignore, resamples=300, seed=7)
    assert first == paired_interval(a, b, targets, ignore, resamples=300, seed=7)
    assert first != paired_interval(a, b, targets, ignore, resamples=300, seed=8)
    np.testing.assert_array_equal(resample_indices(40, 5, 7), resample_indices(40, 5, 7))
    assert resample_indices(40, 1000).shape == (1000, 40)


def test_blocks_do_not_change_the_numbers():
    targets, ignore, a, _ = _data(5)
    one = Resamples(targets, ignore, resamples=50, seed=1).maps(a)
    many = Resamples(targets, ignore, resamples=50, seed=1, block_entries=1).maps(a)
    np.testing.assert_array_equal(one, many)


def test_bad_inputs():
    targets, ignore, a, _ = _data(6)
    with pytest.raises(ValueError, match="shape"):
        Resamples(targets, ignore, resamples=10).maps(a[:, :3])
    with pytest.raises(ValueError, match="indices"):
        Resamples(targets, indices=np.array([[0, 99]]))
    with pytest.raises(ValueError, match="same resamples"):
        rs1, rs2 = Resamples(targets, resamples=10), Resamples(targets, resamples=11)
        interval(rs1.score(a), rs2.score(a))


def test_verdict():
    assert Interval(0.5, 0.1, 0.9, 1000).verdict == "win"
    assert Interval(-0.5, -0.9, -0.1, 1000).verdict == "loss"
    assert Interval(0.5, -0.1, 0.9, 1000).verdict == "tie"
    assert str(Interval(0.5, -0.1, 0.9, 1000)) == "+0.50 [-0.10, +0.90]"


def _stats(n=60, c=1000, seed=0):
    """Softmax-model-like cached statistics, with one pooling baseline that applies."""
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((n, c))).astype(np.float32)
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob = (prob / prob.sum(1, keepdims=True)).astype(np.float32)
    out = {"logits": logits, "logit_base": logits, "prob_base": prob}
    for space, scale in (("logit", 1.0), ("prob", 1e-3)):
        out[f"{space}_att"] = (rng.random((n, 8, c)) * scale).astype(np.float32)
        out[f"{space}@max-pool"] = out[f"{space}_base"] + out[f"{space}_att"][:, -1]
    return out


@pytest.mark.parametrize("pool", ["max", "sum"])
def test_method_scores_are_what_the_table_ranks(pool):
    from posthoc_csra.classmaps import load_class_map
    from posthoc_csra.datasets import VOC_CLASSES, split_indices
    from posthoc_csra.evaluation import evaluate_stats, method_scores
    from posthoc_csra.metrics import average_precision

    rng = np.random.default_rng(1)
    n = 60
    cmap = load_class_map("voc2007").reorder(VOC_CLASSES)
    targets = rng.random((n, len(VOC_CLASSES))) < 0.2
    ignore = (rng.random(targets.shape) < 0.05) & ~targets
    stats = _stats(n)
    df = evaluate_stats(stats, targets, ignore, EvalOptions([0.1, 0.35], [1, 4], ["logit", "prob"], pool=pool,
                                                          select_on="val"), class_map=cmap)
    _, test = split_indices(n)
    t, ign = targets[:, cmap.mapped][test], ignore[:, cmap.mapped][test]
    rows = df[(df["split"] == "test") & df["mAP"].notna()]
    assert set(rows["method"]) == {"model", "csra", "max-pool"} and len(rows) == 2 * (2 + 2 * 3)
    for row in rows.itertuples():
        s = method_scores(stats, row.space, row.method, heads=int(row.heads) if row.method == "csra" else 1,
                          lam=row.lam if row.method == "csra" else 0.0, class_map=cmap, pool=pool)
        assert s.shape == (n, int(cmap.mapped.sum()))
        assert 100 * np.nanmean(average_precision(s[test], t, ign)) == row.mAP  # to the bit
    np.testing.assert_array_equal(method_scores(stats, "prob", "csra", heads=4, lam=0.0, class_map=cmap, pool=pool),
                                  method_scores(stats, "prob", "model", class_map=cmap, pool=pool))
    with pytest.raises(Exception, match="unknown method"):
        method_scores(stats, "prob", "mean-pool")
