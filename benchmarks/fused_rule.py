"""What a fused CPU kernel would buy the rule's attention terms: an experiment, not part of the package.

    python benchmarks/fused_rule.py                 # ViT-S/16 at 224: B=32, L=196, C=1000, heads=8
    python benchmarks/fused_rule.py --reps 31 --batch 32 --locations 196 --classes 1000

``perf.py`` (a) finds the rule of heads=8 on ViT-S over its goal on 2-core CPUs (benchmarks/results/perf.md):
the eager path (``attention._exp_terms``) makes about six passes over a (7, B', C', L) block in the L2 cache,
one tensor operation each, and no eager formulation tried is faster (``eager_rule.py`` times them). This script
compiles, with ``torch.utils.cpp_extension.load_inline`` (a C++ compiler and ninja needed; about a minute, once),
one loop that does every temperature of an (image, 16 classes) tile in registers straight from the (B, L, C)
per-location logits: the max over L, then per location ``x = (z − max)·scale`` and for every T
``e = exp(max(T·x, −87))``, ``Σ e`` and ``Σ e·x`` — the same formula as the eager path, vectorised across
classes (an inline exp: Cody–Waite reduction and a degree-6 polynomial, ~1e-7 relative error).

It prints, measured in this run on the same inputs, interleaved: the eager attention terms of every head
(``attention.head_terms``, what the scorer calls) and the kernel, in ms, their ratio, and how far each is from
the formula in float64 (both spaces: logits with per-class scales, and probabilities). ``--perf MODEL`` then
runs ``perf.py``'s section (a) for MODEL twice, as the package is and with the kernel in place of the eager
path (``attention._exp_terms`` patched for this process only), and prints the heads=8 rows: the overhead by
parts against the model's goal. ``--published OUT`` runs ``published.py`` with the kernel in place (into OUT,
with its own statistics cache there) and compares the results with the committed ones, made by the eager path:
would shipping the kernel change a published number? Nothing in the package uses the kernel; it is the measured
case for (or against) shipping one.

    python benchmarks/fused_rule.py --perf vit_small_patch16_224
    python benchmarks/fused_rule.py --published /tmp/kernel-results --published-models tf_efficientnet_lite0
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import statistics
import sys
import time
from pathlib import Path

import torch

KERNEL = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// e^a for a in [-87, 0] (the caller clamps): a = n·ln2 + r, |r| <= ln2/2, e^r by its degree-6 Taylor polynomial
// (relative error ~1e-7), 2^n from the exponent bits. Written so that GCC vectorises it inline.
static inline float exp_clamped(float a) {
  const float n = std::floor(a * 1.44269504f + 0.5f);
  const float r = (a - n * 0.693145752f) - n * 1.42860677e-06f;
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

constexpr int64_t V = 16;

// One image, V classes (rows ``C`` apart), every temperature: Σ e and Σ e·x per class into num/den (F, V).
// Not inlined: on its own GCC keeps the F·V accumulators in vector registers.
template <int F>
__attribute__((noinline)) static void tile_terms(const float* base, int64_t L, int64_t C, const float* m,
                                                 const float* sc, const float* T, float* num_out, float* den_out) {
  float num[F][V], den[F][V];
  for (int f = 0; f < F; ++f)
    for (int j = 0; j < V; ++j) num[f][j] = 0.f, den[f][j] = 0.f;
  for (int64_t k = 0; k < L; ++k) {
    const float* row = base + k * C;
    float x[V];
    #pragma omp simd
    for (int j = 0; j < V; ++j) x[j] = (row[j] - m[j]) * sc[j];
    #pragma GCC unroll 16
    for (int f = 0; f < F; ++f) {
      const float t = T[f];
      #pragma omp simd
      for (int j = 0; j < V; ++j) {
        const float e = exp_clamped(std::max(t * x[j], -87.f));
        den[f][j] += e;
        num[f][j] += e * x[j];
      }
    }
  }
  for (int f = 0; f < F; ++f)
    for (int j = 0; j < V; ++j) num_out[f * V + j] = num[f][j], den_out[f * V + j] = den[f][j];
}

torch::Tensor attention_terms(torch::Tensor z, torch::Tensor scale, std::vector<double> temperatures) {
  TORCH_CHECK(z.dim() == 3 && z.is_contiguous() && z.scalar_type() == torch::kFloat,
              "z: (B, L, C) contiguous fp32");
  const int64_t B = z.size(0), L = z.size(1), C = z.size(2), F = temperatures.size();
  TORCH_CHECK(F >= 1 && F <= 8, "1 to 8 temperatures");
  auto out = torch::empty({F, B, C}, z.options());
  const float* zp = z.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t vectors = (C + V - 1) / V;
  std::vector<float> T(temperatures.begin(), temperatures.end());
  at::parallel_for(0, B * vectors, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> pad;  // the last, partial vector of classes: its rows copied into V wide ones
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / vectors, c0 = (job % vectors) * V, n = std::min(V, C - c0);
      const float* base = zp + b * L * C + c0;
      int64_t stride = C;
      if (n < V) {
        pad.assign(L * V, 0.f);
        for (int64_t k = 0; k < L; ++k) std::copy(base + k * C, base + k * C + n, pad.data() + k * V);
        base = pad.data(), stride = V;
      }
      float m[V], sc[V], num[8 * V], den[8 * V];
      for (int64_t j = 0; j < V; ++j) m[j] = base[j], sc[j] = j < n ? sp[c0 + j] : 1.f;
      for (int64_t k = 1; k < L; ++k) {
        const float* row = base + k * stride;
        #pragma omp simd
        for (int64_t j = 0; j < V; ++j) m[j] = std::max(m[j], row[j]);
      }
      switch (F) {  // the number of temperatures fixed at compile time: every accumulator in a register
        case 1: tile_terms<1>(base, L, stride, m, sc, T.data(), num, den); break;
        case 2: tile_terms<2>(base, L, stride, m, sc, T.data(), num, den); break;
        case 3: tile_terms<3>(base, L, stride, m, sc, T.data(), num, den); break;
        case 4: tile_terms<4>(base, L, stride, m, sc, T.data(), num, den); break;
        case 5: tile_terms<5>(base, L, stride, m, sc, T.data(), num, den); break;
        case 6: tile_terms<6>(base, L, stride, m, sc, T.data(), num, den); break;
        case 7: tile_terms<7>(base, L, stride, m, sc, T.data(), num, den); break;
        default: tile_terms<8>(base, L, stride, m, sc, T.data(), num, den); break;
      }
      for (int64_t f = 0; f < F; ++f)
        for (int64_t j = 0; j < n; ++j)
          op[(f * B + b) * C + c0 + j] = num[f * V + j] / den[f * V + j] / sc[j] + m[j];
    }
  });
  return out;
}
"""


def formula64(z_blc: torch.Tensor, temperatures, scale: torch.Tensor) -> torch.Tensor:
    """(F, B, C) in float64, straight from the paper: att_T(s) = Σ_k s_k·softmax(T·s)_k with s = scale·z."""
    s = z_blc.double().transpose(1, 2) * scale.double().view(1, -1, 1)
    terms = torch.stack([(s * torch.softmax(t * s, dim=-1)).sum(-1) for t in temperatures])
    return terms / scale.double().view(1, 1, -1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--locations", type=int, default=196)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=21)
    parser.add_argument("--perf", metavar="MODEL", default=None,
                        help="also run perf.py's section (a) for this timm model, eager and with the kernel")
    parser.add_argument("--published", metavar="OUT", type=Path, default=None,
                        help="also run published.py with the kernel into OUT and compare its rows with the "
                             "committed benchmarks/results/published.csv.gz (made by the eager path)")
    parser.add_argument("--published-models", default="tf_efficientnet_lite0",
                        help="manifest entries for --published (comma-separated; default %(default)s)")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest error of the kernel against float64, relative to the largest term (exit 1 above)")
    args = parser.parse_args(argv)

    from torch.utils.cpp_extension import load_inline

    from posthoc_csra.attention import head_terms

    started = time.perf_counter()
    kernel = load_inline("posthoc_csra_fused_rule_probe_v2", cpp_sources=KERNEL, functions=["attention_terms"],
                         extra_cflags=["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno",
                                       "-fno-trapping-math"])
    print(f"compiled in {time.perf_counter() - started:.0f} s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    heads = (1, 2, 3, 4, 5, 6, 7, math.inf)
    temperatures = [float(t) for t in heads[:-1]]
    g = torch.Generator().manual_seed(0)
    b, l, c = args.batch, args.locations, args.classes
    logits = (2 * torch.randn(b, l, c, generator=g) + torch.randn(1, 1, c, generator=g)).contiguous()
    scale = (0.5 + torch.rand(c, generator=g)).reciprocal()  # 1/‖w_c‖
    probs = logits.softmax(dim=-1)
    cases = {"logit": (logits, scale), "prob": (probs, None)}
    with torch.inference_mode():
        for space, (z, sc) in cases.items():
            s = z.transpose(1, 2)  # (B, C, L): what the scorer passes (a view of the (B, L, C) logits)
            eager = lambda: head_terms(s, heads, scale=sc, bounded=space == "prob")  # noqa: E731
            ones = torch.ones(c)
            fused = lambda: kernel.attention_terms(z, ones if sc is None else sc, temperatures)  # noqa: E731
            reference = formula64(z, temperatures, ones if sc is None else sc)
            err_eager = (eager()[:, :-1].transpose(0, 1).double() - reference).abs().max().item()
            err_fused = (fused().double() - reference).abs().max().item()
            if err_fused > args.tolerance * max(1.0, reference.abs().max().item()):
                print(f"{space}: the kernel is off the formula by {err_fused:.3g} (eager {err_eager:.3g})")
                return 1
            for _ in range(3):
                eager(), fused()
            times = {"eager": [], "fused": []}
            for _ in range(args.reps):
                for name, fn in (("eager", eager), ("fused", fused)):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
            ratios = sorted(e / f for e, f in zip(times["eager"], times["fused"]))
            print(f"{space}: (B, L, C) = ({b}, {l}, {c}), heads=8: eager {ms['eager']:.1f} ms, "
                  f"fused {ms['fused']:.1f} ms "
                  f"(median {ms['eager'] / ms['fused']:.2f}× faster; paired ratios {ratios[len(ratios) // 4]:.2f}–"
                  f"{ratios[3 * len(ratios) // 4]:.2f}); largest error against float64: eager {err_eager:.2g}, "
                  f"fused {err_fused:.2g}")
    if args.perf:
        compare_in_perf(args.perf, kernel)
    if args.published:
        reference = Path(__file__).with_name("results") / "published.csv.gz"
        if compare_published(args.published, args.published_models, kernel, reference):
            return 1
    return 0


@functools.lru_cache(maxsize=None)
def benchmark_module(name: str):
    """``benchmarks/<name>.py`` loaded by path, once (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before it runs: its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def kernel_in_place(kernel):
    """Within the block, the package's CPU attention terms (``attention._exp_terms``) are the kernel's."""
    from posthoc_csra import attention

    eager_terms = attention._exp_terms

    def kernel_terms(s, temperatures, scale, bounded, maxima=None):
        z = s.transpose(1, 2)  # the (B, L, C) per-location scores the scorer's (B, C, L) view is made of
        if not z.is_contiguous() or not 1 <= len(temperatures) <= 8 or s.dtype != torch.float32:
            return eager_terms(s, temperatures, scale, bounded, maxima)
        sc = torch.ones(s.shape[1]) if scale is None else scale.float().contiguous()
        return list(kernel.attention_terms(z, sc, [float(t) for t in temperatures]).unbind(0))

    attention._exp_terms = kernel_terms
    try:
        yield
    finally:
        attention._exp_terms = eager_terms


def compare_in_perf(model: str, kernel) -> None:
    """perf.py's section (a) for ``model``, as the package is and with the kernel; prints the heads=8 rows."""
    from posthoc_csra.runtime import Runtime

    perf = benchmark_module("perf")
    args = perf.parse_args(["--models", model, "--sections", "a"])
    for label, in_place in (("eager (the package)", contextlib.nullcontext()),
                            ("fused kernel", kernel_in_place(kernel))):
        with in_place:
            result = perf.bench_overhead(model, args, Runtime(device="cpu"))
        for row in result["rows"]:
            if row["config"].startswith("heads=8"):
                print(f"perf (a) {model}, {row['config']}, {label}: by parts {row['parts_ratio']:.3f} "
                      f"(goal {result['goal']}: {row['parts_verdict']}; head {1000 * row['head_s']:.1f} ms + rule "
                      f"{1000 * row['rule_s']:.1f} ms per batch, plain {row['plain_s']:.3f} s), "
                      f"directly {row['ratio']:.3f}", flush=True)


#: The published table's columns that say which row it is; ``RESULTS`` are what the row reports.
ROW_KEYS = ("model", "weights", "dataset", "img_size", "split", "method", "space", "heads", "lam", "pool")
RESULTS = ("mAP", "delta", "CF1@top3", "OF1@top3", "threshold", "CF1@t", "OF1@t")
#: published.py's tables made from that one, and the columns that say which row a row is.
DERIVED = {"headline.csv": ("model", "dataset", "img_size", "space"),
           "lambda_bands.csv": ("model", "dataset", "img_size", "space", "heads", "lam"),
           "per_class.csv": ("model", "dataset", "img_size", "space", "class")}


def matched(ours, theirs, keys) -> tuple:
    """(our rows with their counterparts' columns suffixed ``_eager``, rows without a counterpart)."""
    merged = ours.merge(theirs, on=list(keys), how="left", suffixes=("", "_eager"), indicator=True)
    return merged[merged["_merge"] == "both"], int((merged["_merge"] != "both").sum())


def differing(merged, column: str):
    """Rows whose ``column`` differs from its ``_eager`` counterpart (NaN equals NaN: ``compare_results``)."""
    return ~benchmark_module("compare_results").same_cells(merged[column], merged[f"{column}_eager"])


def compare_published(out: Path, models: str, kernel, reference: Path) -> int:
    """``published.py`` for ``models`` with the kernel in place (statistics cached under ``out``: use a folder
    only this comparison writes), then ``compare_outputs(out, reference)``."""
    published = benchmark_module("published")
    with kernel_in_place(kernel):
        published.main(["--out", str(out), "--no-readme", "--models", models, "--cache-dir", str(out / "cache")])
    return compare_outputs(out, reference)


def compare_outputs(out: Path, reference: Path) -> int:
    """The rows of ``out``'s ``published.csv.gz`` compared with the same rows of ``reference`` (the committed
    table, made by the eager path): per result column how many rows differ at full precision and the largest
    change, how many mAPs differ as README shows them (%, 2 decimals), whether validation picks the same
    settings; then the tables made from it (``DERIVED``; README's table is ``headline.csv``): rows that differ
    in any column. Returns the number of rows without a counterpart in the reference (0: all compared)."""
    import pandas as pd

    ours = pd.read_csv(out / "published.csv.gz")
    merged, missing = matched(ours, pd.read_csv(reference), ROW_KEYS)
    print(f"published.py with the kernel: {len(ours)} rows, {len(merged)} compared with {reference} "
          f"({missing} without a counterpart)")
    for column in RESULTS:
        print(f"  {column}: {int(differing(merged, column).sum())} of {len(merged)} differ, largest change "
              f"{(merged[column] - merged[f'{column}_eager']).abs().max():.3g}")
    shown = differing(merged.assign(mAP=merged["mAP"].round(2), mAP_eager=merged["mAP_eager"].round(2)), "mAP")
    print(f"  mAP at 2 decimals (as README shows it): {int(shown.sum())} differ; settings chosen on "
          f"validation: {int(differing(merged, 'selected').sum())} rows differ")
    for name, keys in DERIVED.items():
        ours = pd.read_csv(out / name)
        merged, absent = matched(ours, pd.read_csv(reference.with_name(name)), keys)
        missing += absent
        columns = [c for c in ours.columns if c not in keys]
        changed = {c: int(differing(merged, c).sum()) for c in columns}
        detail = ", ".join(f"{c} {n}" for c, n in changed.items() if n) or "every column the same"
        print(f"{name}: {len(merged)} of {len(ours)} rows compared ({absent} without a counterpart): {detail}")
    return missing


if __name__ == "__main__":
    sys.exit(main())
