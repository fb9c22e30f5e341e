import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_fscore_support

from posthoc_csra.metrics import (average_precision, average_precision_sweep, f1_scores,
                                  mean_average_precision, real_accuracy, topk_accuracy)


def _sklearn_ap(scores, targets, ignore=None):
    """Reference AP (C,): sklearn per class on the non-ignored entries, NaN without positives."""
    keep = np.ones(targets.shape, bool) if ignore is None else ~ignore
    out = []
    for c in range(scores.shape[1]):
        y, s = targets[keep[:, c], c], scores[keep[:, c], c]
        out.append(average_precision_score(y, s) if y.any() else np.nan)
    return np.array(out)


def _data(seed, n=300, c=24, decimals=None, dtype=np.float64, rate=0.15):
    rng = np.random.default_rng(seed)
    targets = rng.random((n, c)) < rate
    scores = (1.2 * targets + rng.standard_normal((n, c))).astype(dtype)
    if decimals is not None:
        scores = np.round(scores, decimals).astype(dtype)
    return scores, targets, rng


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ap_matches_sklearn_tie_free(dtype):
    scores, targets, _ = _data(0, dtype=dtype)
    assert len(np.unique(scores)) == scores.size
    np.testing.assert_allclose(average_precision(scores, targets), _sklearn_ap(scores, targets),
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("decimals", [1, 0])
def test_ap_matches_sklearn_heavy_ties(decimals):
    scores, targets, _ = _data(1, decimals=decimals)
    scores[:, 0] = 0.5  # one column entirely tied
    targets[:, 1] = True  # one column entirely positive
    assert len(np.unique(scores[:, 2])) < len(scores) // 4
    np.testing.assert_allclose(average_precision(scores, targets), _sklearn_ap(scores, targets),
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("decimals", [None, 1])
def test_ap_ignore_matches_sklearn_on_kept_entries(decimals):
    scores, targets, rng = _data(2, decimals=decimals)
    ignore = rng.random(scores.shape) < 0.2
    ap = average_precision(scores, targets, ignore)
    np.testing.assert_allclose(ap, _sklearn_ap(scores, targets, ignore), rtol=0, atol=1e-9)
    # ignored entries leave the ranking: their scores and labels do not matter at all
    moved = np.where(ignore, rng.choice([-np.inf, np.inf, np.nan, 9.0], size=scores.shape), scores)
    flipped = np.where(ignore, ~targets, targets)
    np.testing.assert_array_equal(average_precision(moved, flipped, ignore), ap)
    assert not np.allclose(ap, average_precision(scores, targets), atol=1e-6)


def test_ap_hand_examples():
    s = np.array([[0.9, 0.5], [0.8, 0.5], [0.7, 0.1], [0.6, 0.0]])
    t = np.array([[1, 1], [0, 0], [1, 1], [0, 0]])
    # col 0: positives at ranks 1 and 3 -> (1 + 2/3) / 2; col 1: tie group {pos, neg} then pos
    np.testing.assert_allclose(average_precision(s, t), [(1 + 2 / 3) / 2, 0.5 * 0.5 + 0.5 * 2 / 3],
                               atol=1e-12)
    # -inf positive tied with an ignored -inf: the ignored one must not count
    s2 = np.array([[1.0], [-np.inf], [-np.inf], [0.0]])
    t2 = np.array([[1], [0], [1], [0]])
    ign = np.array([[False], [True], [False], [False]])
    np.testing.assert_allclose(average_precision(s2, t2, ign), [(1 + 2 / 3) / 2], atol=1e-12)
    np.testing.assert_allclose(average_precision(s2, t2), [(1 + 0.5) / 2], atol=1e-12)


def test_classes_without_positives_are_nan_and_left_out_of_mean():
    scores, targets, rng = _data(3)
    ignore = np.zeros(targets.shape, bool)
    targets[:, 4] = False  # no positives at all
    ignore[:, 7] = targets[:, 7]  # positives exist but all are ignored
    ap = average_precision(scores, targets, ignore)
    assert np.isnan(ap[4]) and np.isnan(ap[7]) and np.isnan(ap).sum() == 2
    ref = _sklearn_ap(scores, targets, ignore)
    assert mean_average_precision(scores, targets, ignore) == pytest.approx(np.nanmean(ref), abs=1e-9)
    assert 0 <= mean_average_precision(scores, targets, ignore) <= 1
    assert np.isnan(mean_average_precision(scores, np.zeros_like(targets)))


def test_nan_scores_raise():
    scores, targets, _ = _data(4, n=20, c=3)
    targets[:, 0] = True
    scores[5, 0] = np.nan
    with pytest.raises(ValueError):
        average_precision(scores, targets)


def test_torch_inputs():
    torch = pytest.importorskip("torch")
    scores, targets, rng = _data(5, n=50, c=6)
    ignore = rng.random(scores.shape) < 0.1
    expected = average_precision(scores, targets, ignore)
    got = average_precision(torch.from_numpy(scores), torch.from_numpy(targets.astype(np.float32)),
                            torch.from_numpy(ignore))
    np.testing.assert_array_equal(got, expected)
    assert isinstance(got, np.ndarray) and got.shape == (6,)


@pytest.mark.parametrize("ties", [False, True])
def test_sweep_equals_per_lambda_calls(ties):
    rng = np.random.default_rng(6)
    n, c = 400, 25
    targets = rng.random((n, c)) < 0.1
    targets[:, 3] = False
    base = (targets + rng.standard_normal((n, c))).astype(np.float32)
    att = (targets + rng.standard_normal((n, c))).astype(np.float32)
    if ties:
        base, att = np.round(base, 1), np.round(att)
    ignore = rng.random((n, c)) < 0.05
    lams = [0.0, 0.1, 0.35, 1.0, 1.5, -0.3, 7.0]
    sweep = average_precision_sweep(base, att, lams, targets, ignore)
    assert sweep.shape == (len(lams), c)
    for i, lam in enumerate(lams):
        scores = base + lam * att  # Python-float lam keeps float32, as the sweep does
        assert scores.dtype == np.float32
        np.testing.assert_allclose(sweep[i], average_precision(scores, targets, ignore),
                                   rtol=0, atol=1e-12)
        if i % 3 == 0:  # sklearn on a few lambdas keeps the test fast
            np.testing.assert_allclose(sweep[i], _sklearn_ap(scores, targets, ignore),
                                       rtol=0, atol=1e-9)
    assert np.isnan(sweep[:, 3]).all()
    assert not np.allclose(sweep[0], sweep[-1])


def test_f1_hand_example():
    scores = np.array([[0.9, 0.2, 0.6],
                       [0.4, 0.7, 0.1],
                       [0.8, 0.6, 0.3],
                       [0.1, 0.3, 0.5]])
    targets = np.array([[1, 0, 1],
                        [1, 1, 0],
                        [0, 1, 0],
                        [0, 0, 0]])
    # predictions at 0.5: col0 {0,2} col1 {1,2} col2 {0,3}
    # tp: 1, 2, 1; predicted: 2, 2, 2; positives: 2, 2, 1
    r = f1_scores(scores, targets, 0.5)
    cp, cr = (0.5 + 1 + 0.5) / 3, (0.5 + 1 + 1) / 3
    assert r["CP"] == pytest.approx(cp) and r["CR"] == pytest.approx(cr)
    assert r["CF1"] == pytest.approx(2 * cp * cr / (cp + cr))
    assert r["OP"] == pytest.approx(4 / 6) and r["OR"] == pytest.approx(4 / 5)
    assert r["OF1"] == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5))
    # ignoring the false positive (row 2, col 0) and the missed positive (row 1, col 0)
    ign = np.zeros(scores.shape, bool)
    ign[2, 0] = ign[1, 0] = True
    r2 = f1_scores(scores, targets, 0.5, ignore=ign)
    assert r2["CP"] == pytest.approx((1 + 1 + 0.5) / 3) and r2["CR"] == pytest.approx(1.0)
    assert r2["OP"] == pytest.approx(4 / 5) and r2["OR"] == pytest.approx(1.0)


def test_f1_matches_sklearn_without_ignore():
    scores, targets, _ = _data(7, n=200, c=10)
    targets[:, 2] = False  # zero-division path
    pred = scores >= 0.8
    r = f1_scores(scores, targets, 0.8)
    for avg, (p, rc) in (("macro", ("CP", "CR")), ("micro", ("OP", "OR"))):
        sp, sr, sf, _ = precision_recall_fscore_support(targets, pred, average=avg, zero_division=0)
        assert r[p] == pytest.approx(sp, abs=1e-12) and r[rc] == pytest.approx(sr, abs=1e-12)
    assert r["OF1"] == pytest.approx(precision_recall_fscore_support(
        targets, pred, average="micro", zero_division=0)[2], abs=1e-12)


def test_topk_accuracy():
    scores = np.array([[0.1, 0.7, 0.2],
                       [0.5, 0.5, 0.0],   # tie: lower index ranks first
                       [0.3, 0.3, 0.4]])
    labels = np.array([1, 1, 0])
    assert topk_accuracy(scores, labels, k=1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, k=2) == pytest.approx(1.0)
    assert topk_accuracy(scores, np.array([1, 0, 2]), k=1) == pytest.approx(1.0)
    rng = np.random.default_rng(8)
    s, y = rng.standard_normal((100, 10)), rng.integers(0, 10, 100)
    assert topk_accuracy(s, y, 1) == pytest.approx(np.mean(s.argmax(1) == y))
    top5 = np.argsort(-s, axis=1)[:, :5]
    assert topk_accuracy(s, y, 5) == pytest.approx(np.mean((top5 == y[:, None]).any(1)))
    assert topk_accuracy(s, y, 10) == 1.0


def test_real_accuracy():
    scores = np.array([[0.9, 0.1, 0.0],
                       [0.2, 0.8, 0.0],
                       [0.1, 0.2, 0.7],
                       [0.6, 0.3, 0.1]])
    sets = [{0, 2}, [0], [], (1, 2)]  # hit, miss, excluded, miss (pred 0)
    assert real_accuracy(scores, sets) == pytest.approx(1 / 3)
    mask = np.zeros(scores.shape, bool)
    for i, s in enumerate(sets):
        mask[i, list(s)] = True
    assert real_accuracy(scores, mask) == pytest.approx(1 / 3)
    assert real_accuracy(scores, [[0], [1], [2], [0]]) == 1.0
    assert np.isnan(real_accuracy(scores, [[], [], [], []]))
