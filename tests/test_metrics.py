import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_fscore_support

from posthoc_csra.options import EvalOptions
from posthoc_csra.errors import InputError
from posthoc_csra.metrics import (always_positive_classes, average_precision, average_precision_sweep,
                                  best_f1_threshold, f1_scores, ranked_classes, topk_f1_scores, topk_predictions)


def _sklearn_ap(scores, targets, ignore=None):
    """Reference AP (C,): sklearn per class on the non-ignored entries; NaN without a positive or without a
    negative (where sklearn's AP is 1 whatever the scores)."""
    keep = np.ones(targets.shape, bool) if ignore is None else ~ignore
    out = []
    for c in range(scores.shape[1]):
        y, s = targets[keep[:, c], c], scores[keep[:, c], c]
        out.append(average_precision_score(y, s) if y.any() and not y.all() else np.nan)
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
    targets[:, 1] = True  # one column entirely positive: not ranked, NaN
    assert len(np.unique(scores[:, 2])) < len(scores) // 4
    ap = average_precision(scores, targets)
    np.testing.assert_allclose(ap, _sklearn_ap(scores, targets), rtol=0, atol=1e-9)
    assert np.isnan(ap[1]) and np.isfinite(np.delete(ap, 1)).all()


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


def test_classes_without_positives_are_nan():
    scores, targets, rng = _data(3)
    ignore = np.zeros(targets.shape, bool)
    targets[:, 4] = False  # no positives at all
    ignore[:, 7] = targets[:, 7]  # positives exist but all are ignored
    ap = average_precision(scores, targets, ignore)
    assert np.isnan(ap[4]) and np.isnan(ap[7]) and np.isnan(ap).sum() == 2
    np.testing.assert_allclose(ap, _sklearn_ap(scores, targets, ignore), rtol=0, atol=1e-9)
    assert np.isnan(average_precision(scores, np.zeros_like(targets))).all()


def test_nan_scores_raise():
    scores, targets, _ = _data(4, n=20, c=3)
    targets[:, 0] = True
    targets[0, 0] = False  # a ranked class (NaN in a class that is not ranked is never looked at)
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


def _sklearn_prf(targets, pred, ignore=None, positive_classes=False):
    """Reference CP, CR, OP, OR: sklearn per class on the non-ignored entries (macro), and micro over them."""
    keep = np.ones(targets.shape, bool) if ignore is None else ~ignore
    t, p = targets & keep, pred & keep  # an ignored entry is neither positive nor predicted
    labels = np.flatnonzero(t.any(0) & (keep & ~targets).any(0)) if positive_classes else None  # ranked classes
    cp, cr, _, _ = precision_recall_fscore_support(t, p, average="macro", labels=labels, zero_division=0)
    op, orec, of1, _ = precision_recall_fscore_support(t, p, average="micro", zero_division=0)
    return {"CP": cp, "CR": cr, "CF1": 2 * cp * cr / (cp + cr) if cp + cr else 0.0,
            "OP": op, "OR": orec, "OF1": of1}


def _brute_topk(scores, k, ignore=None):
    """Per image: non-ignored entries by descending score, lower class index first among ties."""
    pred = np.zeros(scores.shape, bool)
    for i, row in enumerate(scores):
        cand = [c for c in range(len(row)) if ignore is None or not ignore[i, c]]
        cand.sort(key=lambda c: (-row[c], c))
        pred[i, cand[:k]] = True
    return pred


@pytest.mark.parametrize("decimals, with_ignore", [(None, False), (1, True), (0, True)])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_topk_predictions_match_brute_force(decimals, with_ignore, k):
    scores, targets, rng = _data(9, n=60, c=12, decimals=decimals)
    ignore = rng.random(scores.shape) < 0.3 if with_ignore else None
    if with_ignore:
        ignore[0, :-2] = True  # fewer than k non-ignored entries: all of them are predicted
    pred = topk_predictions(scores, k, ignore)
    np.testing.assert_array_equal(pred, _brute_topk(scores, k, ignore))
    expected = np.minimum(k, 12 if ignore is None else (~ignore).sum(1))
    np.testing.assert_array_equal(pred.sum(1), expected)


def test_topk_predictions_ties_and_bad_k():
    s = np.array([[0.5, 0.5, 0.5, 0.1], [0.2, 0.9, 0.9, 0.9], [-np.inf, -np.inf, 1.0, -np.inf]])
    np.testing.assert_array_equal(topk_predictions(s, 2), [[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0]])
    np.testing.assert_array_equal(topk_predictions(s, 9), np.ones(s.shape, bool))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="k must be"):
            topk_predictions(s, bad)
    with pytest.raises(ValueError, match="NaN"):
        topk_predictions(np.array([[np.nan, 1.0]]), 1)
    # a NaN in an ignored entry does not matter
    np.testing.assert_array_equal(topk_predictions(np.array([[np.nan, 1.0, 0.0]]), 1,
                                                   np.array([[True, False, False]])), [[0, 1, 0]])


@pytest.mark.parametrize("decimals, with_ignore", [(None, False), (1, True)])
@pytest.mark.parametrize("positive_classes", [False, True])
def test_topk_f1_matches_sklearn(decimals, with_ignore, positive_classes):
    scores, targets, rng = _data(10, n=150, c=15, decimals=decimals)
    targets[:, 2] = False  # a class without positives
    ignore = rng.random(scores.shape) < 0.1 if with_ignore else None
    got = topk_f1_scores(scores, targets, 3, ignore, positive_classes=positive_classes)
    ref = _sklearn_prf(targets, _brute_topk(scores, 3, ignore), ignore, positive_classes)
    assert got == pytest.approx(ref, abs=1e-12)
    assert got["CR"] != pytest.approx(topk_f1_scores(scores, targets, 3, ignore, not positive_classes)["CR"])


def _brute_best_threshold(scores, targets, ignore=None):
    """(best OF1, prediction mask) over every cut at a distinct non-ignored score, plus predicting nothing."""
    keep = np.ones(targets.shape, bool) if ignore is None else ~ignore
    best, best_pred = 0.0, np.zeros(targets.shape, bool)
    for cut in np.sort(np.unique(scores[keep]))[::-1]:  # descending: the first maximum is the highest cut
        pred = (scores >= cut) & keep
        of1 = _sklearn_prf(targets, pred, ignore)["OF1"]
        if of1 > best:
            best, best_pred = of1, pred
    return best, best_pred


@pytest.mark.parametrize("decimals, with_ignore, dtype", [(None, False, np.float64), (1, True, np.float64),
                                                          (0, True, np.float32), (None, True, np.float32)])
def test_best_f1_threshold_matches_brute_force(decimals, with_ignore, dtype):
    scores, targets, rng = _data(11, n=40, c=10, decimals=decimals, dtype=dtype, rate=0.3)
    ignore = rng.random(scores.shape) < 0.15 if with_ignore else None
    t = best_f1_threshold(scores, targets, ignore)
    best, pred = _brute_best_threshold(scores, targets, ignore)
    keep = np.ones(targets.shape, bool) if ignore is None else ~ignore
    np.testing.assert_array_equal((scores >= t) & keep, pred)  # the same predictions as the best cut
    assert f1_scores(scores, targets, t, ignore)["OF1"] == pytest.approx(best, abs=1e-12)
    # t lies strictly between the lowest predicted score and the highest unpredicted one
    lowest_in, highest_out = scores[pred].min(), scores[~pred & keep].max()
    assert highest_out < t < lowest_in and t == pytest.approx((lowest_in + highest_out) / 2, rel=1e-6)


def test_best_f1_threshold_edges():
    s = np.array([[0.9, 0.1], [0.8, 0.7]])
    # all entries positive: predicting everything wins; nothing is lower, so t is the lowest score
    assert best_f1_threshold(s, np.ones(s.shape, bool)) == pytest.approx(0.1)
    assert best_f1_threshold(s, np.zeros(s.shape, bool)) == np.inf
    # one positive on top: the cut is between 0.9 and 0.8; a tie with a negative is predicted together
    assert best_f1_threshold(s, np.array([[1, 0], [0, 0]])) == pytest.approx(0.85)
    tied = np.array([[0.9, 0.9], [0.1, 0.2]])
    assert best_f1_threshold(tied, np.array([[1, 0], [0, 0]])) == pytest.approx(0.55)
    # adjacent float32 values: no float32 strictly between them, so t is the chosen score itself
    lo = np.float32(1.0)
    hi = np.nextafter(lo, np.float32(2))
    t = best_f1_threshold(np.array([[hi, lo]], np.float32), np.array([[1, 0]]))
    assert t == float(hi)
    with pytest.raises(ValueError, match="NaN"):
        best_f1_threshold(np.array([[np.nan, 1.0]]), np.array([[0, 1]]))


def test_f1_positive_classes_matches_sklearn_labels():
    scores, targets, rng = _data(12, n=120, c=9)
    targets[:, [1, 5]] = False
    ignore = rng.random(scores.shape) < 0.1
    for positive_classes in (False, True):
        got = f1_scores(scores, targets, 0.6, ignore, positive_classes=positive_classes)
        assert got == pytest.approx(_sklearn_prf(targets, scores >= 0.6, ignore, positive_classes), abs=1e-12)
    none = f1_scores(scores, np.zeros_like(targets), 0.6, positive_classes=True)
    assert np.isnan(none["CF1"]) and none["OF1"] == 0


# ------------------------------------------------------------------ classes positive everywhere
def test_a_class_positive_everywhere_is_left_out_like_one_without_positives():
    """Its AP is 1 whatever the scores: it is not ranked, so mAP and CF1 are the other classes' means."""
    scores, targets, rng = _data(13, n=200, c=8)
    ignore = rng.random(scores.shape) < 0.1
    targets[:, 2] = True  # positive in every image
    targets[:, 5] = ~ignore[:, 5]  # positive in every non-ignored image (the ignored ones are negatives)
    targets[:, 6] = False  # no positive at all
    assert targets[:, 5].any() and not targets[:, 5].all()
    ranked = ranked_classes(targets, ignore)
    assert ranked.tolist() == [True, True, False, True, True, False, False, True]
    assert np.flatnonzero(always_positive_classes(targets, ignore)).tolist() == [2, 5]
    assert np.flatnonzero(always_positive_classes(targets)).tolist() == [2]  # without ignore, 5 has negatives
    ap = average_precision(scores, targets, ignore)
    assert np.isnan(ap[[2, 5, 6]]).all() and np.isfinite(ap[ranked]).all()
    np.testing.assert_allclose(ap, _sklearn_ap(scores, targets, ignore), rtol=0, atol=1e-9)
    keep = ~ignore
    others = [average_precision_score(targets[keep[:, c], c], scores[keep[:, c], c]) for c in np.flatnonzero(ranked)]
    assert np.nanmean(ap) == pytest.approx(np.mean(others), abs=1e-12)  # mAP: the mean over the other classes
    for c in (2, 5):  # what sklearn says about them, whatever the scores
        for s in (scores[:, c], -scores[:, c], np.zeros(len(scores))):
            assert average_precision_score(targets[keep[:, c], c], s[keep[:, c]]) == pytest.approx(1.0)
    sweep = average_precision_sweep(scores, scores[::-1].copy(), [0.0, 0.5], targets, ignore)
    np.testing.assert_array_equal(sweep[0], ap)
    assert np.isnan(sweep[:, [2, 5, 6]]).all()
    # CF1 at a threshold (per class, independent of other columns) over the ranked classes only: dropping
    # the three left-out columns gives the same macro figures
    drop = [2, 5, 6]
    got = f1_scores(scores, targets, 0.6, ignore, positive_classes=True)
    alone = f1_scores(np.delete(scores, drop, 1), np.delete(targets, drop, 1), 0.6, np.delete(ignore, drop, 1))
    assert (got["CP"], got["CR"], got["CF1"]) == pytest.approx((alone["CP"], alone["CR"], alone["CF1"]), abs=1e-12)
    pred = scores >= 0.6
    assert f1_scores(scores, targets, 0.6, ignore, positive_classes=True) == pytest.approx(
        _sklearn_prf(targets, pred, ignore, positive_classes=True), abs=1e-12)
    assert topk_f1_scores(scores, targets, 3, ignore, positive_classes=True) == pytest.approx(
        _sklearn_prf(targets, _brute_topk(scores, 3, ignore), ignore, positive_classes=True), abs=1e-12)
    # a split where every class is positive everywhere ranks nothing
    everywhere = np.ones((4, 3), bool)
    assert np.isnan(average_precision(scores[:4, :3], everywhere)).all() and not ranked_classes(everywhere).any()
    assert np.isnan(topk_f1_scores(scores[:4, :3], everywhere, 1, positive_classes=True)["CF1"])


def test_the_table_counts_always_positive_classes():
    """evaluate_stats: n_classes counts the ranked classes, n_always_positive the ones left out for it."""
    from posthoc_csra.evaluation import COLUMN_HELP, evaluate_stats

    rng = np.random.default_rng(14)
    n, c = 60, 5
    targets = rng.random((n, c)) < 0.3
    targets[:, 1] = True
    targets[:, 3] = False
    stats = {"logit_base": (targets + rng.normal(size=(n, c))).astype(np.float32),
             "logit_att": rng.normal(size=(n, 8, c)).astype(np.float32)}
    df = evaluate_stats(stats, targets, np.zeros((n, c), bool), EvalOptions([0.5], [1], ["logit"]))
    assert (df["n_classes"] == 3).all() and (df["n_always_positive"] == 1).all()
    model = df[df["method"] == "model"].iloc[0]
    expected = np.mean([average_precision_score(targets[:, k], stats["logit_base"][:, k]) for k in (0, 2, 4)])
    assert model["mAP"] == pytest.approx(100 * expected, abs=1e-9)
    assert "n_always_positive" in COLUMN_HELP["n_classes"] and "every" in COLUMN_HELP["n_always_positive"]


def test_shared_coco_person_is_excluded_and_counted(shared):
    """On the real COCO images person is positive in all 500: left out of mAP and CF1, and counted."""
    from posthoc_csra.datasets import parse_dataset
    from posthoc_csra.evaluation import evaluate_stats

    ds = parse_dataset(f"coco:{shared / 'data' / 'coco2017'}@val2017")
    t, g = ds.targets(), ds.ignore_mask()
    person = ds.classes.index("person")
    assert t[:, person].all() and not g.any()
    assert np.flatnonzero(always_positive_classes(t, g)).tolist() == [person]
    ranked = ranked_classes(t, g)
    assert not ranked[person] and ranked.tolist() == (t.any(0) & ~t.all(0)).tolist()
    rng = np.random.default_rng(0)
    n, c = t.shape
    stats = {"logit_base": (2 * t + rng.normal(size=(n, c))).astype(np.float32),
             "logit_att": rng.normal(size=(n, 8, c)).astype(np.float32)}
    df = evaluate_stats(stats, t, g, EvalOptions([0.3], [1], ["logit"], select_on="val"), split=ds.split(0.5, 0))
    assert (df["n_always_positive"] == 1).all()  # person, in the val half and in the test half
    for name, rows in zip(("val", "test"), ds.split(0.5, 0)):
        row = df[(df["method"] == "model") & (df["split"] == name)].iloc[0]
        tr = t[rows]
        keep = tr.any(0) & ~tr.all(0)
        assert row["n_classes"] == keep.sum() and not keep[person]
        aps = [average_precision_score(tr[:, k], stats["logit_base"][rows, k]) for k in np.flatnonzero(keep)]
        assert row["mAP"] == pytest.approx(100 * np.mean(aps), abs=1e-9)
        top = topk_f1_scores(stats["logit_base"][rows], tr, 3, positive_classes=True)
        assert row["CF1@top3"] == pytest.approx(100 * top["CF1"], abs=1e-9)
    print(f"coco val2017: {int(ranked.sum())} ranked classes; person positive in all {n} images, left out")
