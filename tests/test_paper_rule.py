"""Logit space ranks every class exactly like the paper's CSRA / multi-head head, written here from the
paper's equations (Zhu & Wu, ICCV 2021, Eqs. 1-6), independently of the code under test.

Paper, per class c and location k of the feature map x (D × L):
    ŝ_kc = w_c·x_k / ‖w_c‖                         (1×1 conv classifier, bias-free, rows L2-normalised)
    g_c  = mean_k ŝ_kc                              (class-agnostic average pooling)
    a_c^T = Σ_k ŝ_kc · exp(T ŝ_kc) / Σ_l exp(T ŝ_lc)   (class-specific attention; T = ∞ → max_k ŝ_kc)
    y_c  = g_c + λ · a_c^T                          (one head)
    multi-head: y_c = Σ_h (g_c + λ · a_c^{T_h}),  heads {1}/{∞}, {1,∞}, {1,2,4,∞}, {1..5,∞}, {1..7,∞}
"""
import copy
import math

import numpy as np
import pytest
import timm
import torch
from sklearn.metrics import average_precision_score

from posthoc_csra.options import EvalOptions
from posthoc_csra import CSRAScorer

PAPER_HEADS = {1: [math.inf], 2: [1, math.inf], 4: [1, 2, 4, math.inf], 6: [1, 2, 3, 4, 5, math.inf],
               8: [1, 2, 3, 4, 5, 6, 7, math.inf]}
N_IMAGES, N_CLASSES = 48, 12


def paper_head(x: np.ndarray, w: np.ndarray, lam: float, temperatures) -> np.ndarray:
    """(N, D, L) features, (C, D) classifier → (N, C), in float64 numpy (no torch, no project code)."""
    w_hat = w / np.linalg.norm(w, axis=1, keepdims=True)
    s = np.einsum("cd,ndl->ncl", w_hat, x)
    y = np.zeros(s.shape[:2])
    for t in temperatures:
        if math.isinf(t):
            att = s.max(axis=2)
        else:
            e = np.exp(t * (s - s.max(axis=2, keepdims=True)))
            att = (s * e).sum(axis=2) / e.sum(axis=2)
        y += s.mean(axis=2) + lam * att
    return y


def per_class_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.array([average_precision_score(targets[:, c], scores[:, c]) for c in range(targets.shape[1])])


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=N_CLASSES).eval()
    with torch.no_grad():  # rows of very different norms and a real bias: what separates the paper's rule
        model.fc.weight.mul_(torch.logspace(-1, 1, N_CLASSES)[:, None])
        model.fc.bias.copy_(torch.randn(N_CLASSES) * 3)
    x = torch.randn(N_IMAGES, 3, 64, 64)
    rng = np.random.default_rng(0)
    targets = (rng.random((N_IMAGES, N_CLASSES)) < 0.3).astype(int)
    targets[0], targets[1] = 1, 0  # every class has a positive and a negative
    with torch.no_grad():
        features = model.forward_features(x).flatten(2).double().numpy()
        logits = model(x)
    return model, x, targets, features, model.fc.weight.detach().double().numpy(), logits


@pytest.mark.parametrize("heads", sorted(PAPER_HEADS))
@pytest.mark.parametrize("lam", [0.1, 0.5, 2.0])
def test_logit_space_ranks_every_class_like_the_papers_head(setup, heads, lam):
    model, x, targets, _, w, _ = setup
    model64 = copy.deepcopy(model).double()  # both in float64: float32 rounding can swap two near-tied images
    with torch.no_grad():
        ours = CSRAScorer(model64, lam=lam, heads=heads, space="logit")(x.double()).numpy()
        features = model64.forward_features(x.double()).flatten(2).numpy()
    paper = paper_head(features, w, lam, PAPER_HEADS[heads])
    np.testing.assert_allclose(per_class_ap(ours, targets), per_class_ap(paper, targets), rtol=0, atol=1e-12)


def test_one_head_at_t_1_too(setup):
    model, x, targets, features, w, _ = setup
    with torch.no_grad():
        ours = CSRAScorer(model, lam=0.7, heads=[1.0])(x).double().numpy()
    np.testing.assert_allclose(per_class_ap(ours, targets), per_class_ap(paper_head(features, w, 0.7, [1]), targets),
                               atol=1e-12)


def test_the_four_lines_rank_the_same_at_t_inf(setup):
    """The paper's released "4 lines": mean_k z + λ·max_k z on the raw logits (bias included)."""
    model, x, targets, _, _, _ = setup
    with torch.no_grad():
        scorer = CSRAScorer(model, lam=0.5, heads=1)
        z = scorer.location_logits(x).double()
        four_lines = (z.mean(-1) + 0.5 * z.amax(-1)).numpy()
        ours = scorer(x).double().numpy()
    np.testing.assert_allclose(per_class_ap(ours, targets), per_class_ap(four_lines, targets), atol=1e-12)


def test_the_old_unscaled_rule_would_fail(setup):
    """Guard that the data can tell the rules apart: logit + λ·att(ŝ) (λ/‖w_c‖ per class) ranks differently."""
    model, x, targets, features, w, logits = setup
    lam = 2.0
    w_hat = w / np.linalg.norm(w, axis=1, keepdims=True)
    s = np.einsum("cd,ndl->ncl", w_hat, features)
    old = logits.double().numpy() + lam * s.max(axis=2)
    paper = paper_head(features, w, lam, [math.inf])
    assert np.abs(per_class_ap(old, targets) - per_class_ap(paper, targets)).max() > 1e-3


def test_lambda_zero_is_the_model_exactly(setup):
    model, x, _, _, _, logits = setup
    with torch.no_grad():
        for heads in PAPER_HEADS:
            assert torch.equal(CSRAScorer(model, lam=0, heads=heads)(x), logits)


@pytest.mark.parametrize("heads, temperatures, label", [("T1", [1], "1"), (1, [math.inf], "inf"),
                                                        ("T1+inf", [1, math.inf], "1,inf")])
def test_bench_rows_are_the_papers_head_at_their_temperatures(setup, heads, temperatures, label):
    """The table's row for ``--heads T1`` is the paper's one head at T = 1 (the official code's
    MHA(num_heads=1)), for ``--heads 1`` at T = ∞: each row's mAP is the paper head's, per class."""
    from posthoc_csra.evaluation import evaluate_stats

    model, x, targets, features, w, _ = setup
    with torch.no_grad():
        stats = {k: v.numpy() for k, v in CSRAScorer(model, space="logit").statistics(x).items()}
    table = evaluate_stats(stats, targets, np.zeros(targets.shape, bool), EvalOptions([0.7], [heads], ["logit"]))
    (row,) = table[(table["method"] == "csra") & (table["lam"] == 0.7)].itertuples()
    assert (row.heads, row.temperatures) == (len(temperatures), label)
    paper = per_class_ap(paper_head(features, w, 0.7, temperatures), targets)
    assert row.mAP == pytest.approx(100 * paper.mean(), abs=1e-9)
    with torch.no_grad():
        ours = CSRAScorer(model, lam=0.7, heads=heads)(x).double().numpy()
    np.testing.assert_allclose(per_class_ap(ours, targets), paper, atol=1e-12)
