"""Speed of ``average_precision_sweep`` against scikit-learn on a lambda sweep.

Run: ``python benchmarks/metric_speed.py``. scikit-learn is timed on a few lambda
values only and extrapolated linearly to the full sweep (the output says so).
"""
from __future__ import annotations

import time

import numpy as np
from sklearn.metrics import average_precision_score

from posthoc_csra.metrics import average_precision_sweep


def synthetic_scores(n_images: int = 5000, n_classes: int = 1000, seed: int = 0):
    """Seeded multi-label data: targets (N, C) bool, base and att logits (N, C) float32.

    Long-tailed class frequencies (about 3 labels per image, every class has a
    positive); att is a noisy, partly independent view of the same evidence.
    """
    rng = np.random.default_rng(seed)
    prevalence = np.clip(0.3 * np.arange(1, n_classes + 1) ** -0.7, 2.0 / n_images, 1.0)
    targets = rng.random((n_images, n_classes)) < prevalence[rng.permutation(n_classes)]
    targets[rng.integers(n_images, size=n_classes), np.arange(n_classes)] = True
    evidence = rng.standard_normal((n_images, n_classes))
    base = 2.0 * targets + evidence - 3.0
    att = 1.5 * targets + 0.6 * evidence + 0.8 * rng.standard_normal(base.shape) - 2.0
    return targets, base.astype(np.float32), att.astype(np.float32)


def _sklearn_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Reference: ``average_precision_score`` once per class."""
    return np.array([average_precision_score(targets[:, c], scores[:, c])
                     for c in range(scores.shape[1])])


def measure_sweep_speed(n_images: int = 5000, n_classes: int = 1000, n_lams: int = 101,
                        sklearn_lams: int = 5, seed: int = 0) -> dict:
    """Time the vectorised sweep over all ``n_lams`` lambdas vs sklearn per class per lambda.

    sklearn runs on ``sklearn_lams`` evenly spaced lambdas of the sweep; its full-sweep
    time is extrapolated linearly (per-lambda mean x n_lams). Raises if the two
    disagree by more than 1e-9 on those lambdas.
    """
    targets, base, att = synthetic_scores(n_images, n_classes, seed)
    lams = np.linspace(0.0, 1.0, n_lams)

    t0 = time.perf_counter()
    sweep = average_precision_sweep(base, att, lams, targets)
    sweep_s = time.perf_counter() - t0

    picked = np.unique(np.linspace(0, n_lams - 1, min(sklearn_lams, n_lams)).round().astype(int))
    max_diff, t_sk = 0.0, 0.0
    for i in picked:
        t0 = time.perf_counter()
        ref = _sklearn_ap(base + np.float32(lams[i]) * att, targets)
        t_sk += time.perf_counter() - t0
        max_diff = max(max_diff, float(np.max(np.abs(ref - sweep[i]))))
    if not max_diff <= 1e-9:
        raise AssertionError(f"sweep disagrees with sklearn: max |diff| = {max_diff:.3g}")
    sk_per_lam = t_sk / len(picked)
    sk_total = sk_per_lam * n_lams
    return {
        "n_images": n_images, "n_classes": n_classes, "n_lams": n_lams,
        "sweep_seconds": sweep_s,
        "sweep_seconds_per_lam": sweep_s / n_lams,
        "sklearn_lams_timed": len(picked),
        "sklearn_seconds_per_lam": sk_per_lam,
        "sklearn_seconds_extrapolated": sk_total,
        "speedup": sk_total / sweep_s,
        "max_abs_diff": max_diff,
    }


def main() -> dict:
    r = measure_sweep_speed()
    print(f"AP sweep: {r['n_images']} images x {r['n_classes']} classes x {r['n_lams']} lambdas")
    print(f"{'method':<34}{'s / lambda':>12}{'s / sweep':>12}")
    print(f"{'average_precision_sweep':<34}{r['sweep_seconds_per_lam']:>12.4f}"
          f"{r['sweep_seconds']:>12.2f}")
    print(f"{'sklearn average_precision_score*':<34}{r['sklearn_seconds_per_lam']:>12.4f}"
          f"{r['sklearn_seconds_extrapolated']:>12.2f}")
    print(f"speedup: {r['speedup']:.1f}x   max |AP diff| on shared lambdas: {r['max_abs_diff']:.2e}")
    print(f"* sklearn timed on {r['sklearn_lams_timed']} of the {r['n_lams']} lambdas "
          f"(one call per class per lambda), extrapolated linearly to the full sweep")
    return r


if __name__ == "__main__":
    main()
