"""How fast the rule's attention terms can be in eager PyTorch: the package's CPU path against the other eager
formulations tried for issue 18 — an experiment, not part of the package.

    python benchmarks/eager_rule.py                 # ViT-S/16 at 224: B=32, L=196, C=1000, heads=8
    python benchmarks/eager_rule.py --locations 49  # ResNet-50 / Lite0 at 224

``perf.py`` (a) finds heads=8 on ViT-S at its goal (1.03) on 2-core CPUs: the per-location head and the rule's
attention terms together are about 3 % of the plain forward. ``fused_rule.py`` measures what a compiled kernel
would buy; this script measures the eager alternatives, on the same inputs, interleaved, each checked against
the formula in float64 (``fused_rule.formula64``; exit 1 when one is off by more than ``--tolerance`` relative
to the largest term, so a timing is never of a wrong computation):

* ``package``: ``attention.head_terms`` as the scorer calls it, on the (B, C, L) view of the (B, L, C) logits;
* ``contiguous input``: the same on a (B, C, L)-contiguous copy (the copy timed too): what the layout costs;
* ``block 2^k``: the package's path with ``attention.BLOCK_ELEMENTS`` = 2^k (the terms do not change with it);
* ``integer powers``: one exp per location, ``e^{T·x} = (e^x)^T`` by a multiplication chain (integer T), in the
  package's blocks (with fresh tensors per block, where the package reuses two buffers);
* ``sdpa``: ``F.scaled_dot_product_attention`` with query T·scale_c, keys and values the scores (one "head"
  per (image, class), head dim 1): PyTorch's fused softmax-weighted sum;
* ``formula``: one softmax over L per temperature (``attention._formula_terms``, the path off the CPU), on all
  of s at once and in the package's blocks.

Both spaces: logits with per-class scales 1/‖w_c‖, and probabilities (``bounded``). Each line: the median time
of a call, the package's median over it, the quartiles of the paired per-repetition time ratios (this one /
the package), and the largest error against float64.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch


def _formula64():
    """``fused_rule.formula64``: the float64 reference of the kernel experiment (loaded from its file)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fused_rule", Path(__file__).with_name("fused_rule.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.formula64


#: Heads the paper's largest head set uses: T = 1..7 and ∞ (``choices.HEAD_SETS[8]``).
HEADS = (1, 2, 3, 4, 5, 6, 7, math.inf)


def power_terms(s: torch.Tensor, temperatures: List[float], scale: Optional[torch.Tensor], bounded: bool
                ) -> List[torch.Tensor]:
    """(B, C, L) → a (B, C) term per integer temperature, weights b^T with b = e^x computed once per location.

    x = scale·(s − max s) (or s itself for probabilities); b^T for T ≥ 2 from b floored at 2^(−126/T_max), so
    that no power is subnormal (with T_max = 7 a floored weight is below 2^−36 of the largest, 1: it changes no
    sum)."""
    from posthoc_csra.attention import MIN_EXPONENT

    temps = [int(t) for t in temperatures]
    top = s.amax(-1, keepdim=True)
    x = s - top if not bounded else s.clone()
    if scale is not None:
        x.mul_(scale.view(1, -1, 1))
    highest = max(temps)
    powers = s.new_empty((highest,) + s.shape)  # powers[k] = weight at T = k + 1
    torch.exp(x.clamp_min(MIN_EXPONENT) if not bounded else x, out=powers[0])
    base = powers[0].clamp_min(2.0 ** (-126.0 / highest)) if not bounded else powers[0]
    for k in range(1, highest):
        torch.mul(powers[k - 1], base, out=powers[k])
    terms = (powers * x).sum(-1) / powers.sum(-1)
    if scale is not None:
        terms = terms / scale.view(1, 1, -1)
    if not bounded:
        terms = terms + top.squeeze(-1)
    return [terms[t - 1] for t in temps]


def sdpa_terms(s: torch.Tensor, temperatures: List[float], scale: Optional[torch.Tensor], bounded: bool
               ) -> List[torch.Tensor]:
    """(B, C, L) → a (B, C) term per temperature by ``scaled_dot_product_attention``: query T·scale_c, key and
    value s (head dim 1), so each output is Σ_k s_k·softmax(T·scale_c·s)_k = att_T in the units of s."""
    import torch.nn.functional as F

    b, c, _ = s.shape
    keys = s.contiguous().unsqueeze(-1)  # (B, C, L, 1): C heads of L keys
    temps = torch.tensor(temperatures, dtype=s.dtype).view(1, 1, -1)
    query = (temps if scale is None else temps * scale.view(1, -1, 1)).expand(b, c, -1).unsqueeze(-1)
    out = F.scaled_dot_product_attention(query, keys, keys, scale=1.0).squeeze(-1)  # (B, C, F)
    return list(out.permute(2, 0, 1))


def candidates(blocks) -> Dict[str, Callable]:
    """name → fn(s, scale, bounded) → (B, H, C) terms of ``HEADS`` (the max head's term included)."""
    from posthoc_csra import attention

    def package(s, scale, bounded):
        return attention.head_terms(s, HEADS, scale, bounded)

    def contiguous(s, scale, bounded):
        return attention.head_terms(s.contiguous(), HEADS, scale, bounded)

    def with_block(k):
        def run(s, scale, bounded):
            default, attention.BLOCK_ELEMENTS = attention.BLOCK_ELEMENTS, 1 << k
            try:
                return attention.head_terms(s, HEADS, scale, bounded)
            finally:
                attention.BLOCK_ELEMENTS = default
        return run

    def eager(terms_of):
        """All of s at once, then the max head."""
        def run(s, scale, bounded):
            finite = [float(t) for t in HEADS if t != math.inf]
            return torch.stack(terms_of(s, finite, scale, bounded) + [s.amax(-1)], dim=1)
        return run

    def blocked(terms_of):
        """Blocks of about ``BLOCK_ELEMENTS`` (temperature, image, class, location) values, as the package's path
        makes them (whole images, or equal parts of one image's classes), then the max head."""
        def run(s, scale, bounded):
            finite = [float(t) for t in HEADS if t != math.inf]
            (b, c, l), f = s.shape, len(finite)
            if f * c * l <= attention.BLOCK_ELEMENTS:
                images, classes = max(1, attention.BLOCK_ELEMENTS // (f * c * l)), c
            else:
                images, parts = 1, -(-c // max(1, attention.BLOCK_ELEMENTS // (f * l)))
                classes = -(-c // parts)
            out = s.new_empty((b, f, c))
            for c0 in range(0, c, classes):
                part_scale = None if scale is None else scale[c0:c0 + classes]
                for b0 in range(0, b, images):
                    terms = terms_of(s[b0:b0 + images, c0:c0 + classes], finite, part_scale, bounded)
                    out[b0:b0 + images, :, c0:c0 + classes] = torch.stack(terms, dim=1)
            return torch.cat([out, s.amax(-1).unsqueeze(1)], dim=1)
        return run

    fns = {"package": package, "contiguous input": contiguous}
    fns.update({f"block 2^{k}": with_block(k) for k in blocks})
    formula = lambda s, t, scale, bounded: attention._formula_terms(s, t, scale)  # noqa: E731
    fns.update({"integer powers": blocked(power_terms), "sdpa": eager(sdpa_terms), "formula": eager(formula),
                "formula, blocked": blocked(formula)})
    return fns


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--locations", type=int, default=196)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--blocks", default="17,18,20,21",
                        help="the block sizes 2^k to try besides the package's (comma-separated k)")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest error against float64, relative to the largest term (exit 1 above)")
    args = parser.parse_args(argv)
    from posthoc_csra import attention

    formula64 = _formula64()
    g = torch.Generator().manual_seed(0)
    b, l, c = args.batch, args.locations, args.classes
    logits = (2 * torch.randn(b, l, c, generator=g) + torch.randn(1, 1, c, generator=g)).contiguous()
    scale = (0.5 + torch.rand(c, generator=g)).reciprocal()  # 1/‖w_c‖
    cases = {"logit": (logits, scale), "prob": (logits.softmax(dim=-1), None)}
    fns = candidates([int(k) for k in args.blocks.split(",") if k])
    finite = [float(t) for t in HEADS if t != math.inf]
    print(f"(B, L, C) = ({b}, {l}, {c}), heads=8, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"the package's block: 2^{attention.BLOCK_ELEMENTS.bit_length() - 1} values")
    status = 0
    with torch.inference_mode():
        for space, (z, sc) in cases.items():
            s = z.transpose(1, 2)  # (B, C, L): what the scorer passes
            reference = formula64(z, finite, torch.ones(c) if sc is None else sc)
            bound = args.tolerance * max(1.0, reference.abs().max().item())
            errors = {}
            for name, fn in fns.items():
                errors[name] = (fn(s, sc, space == "prob")[:, :-1].transpose(0, 1).double() - reference).abs().max()
            times = {name: [] for name in fns}
            for _ in range(args.reps):
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    fn(s, sc, space == "prob")
                    times[name].append(time.perf_counter() - t0)
            base = statistics.median(times["package"])
            for name in fns:
                ms = 1000 * statistics.median(times[name])
                ratios = sorted(t / p for t, p in zip(times[name], times["package"]))
                flag = "" if errors[name] <= bound else "  OFF THE FORMULA"
                status |= bool(flag)
                print(f"{space:5s} {name:18s} {ms:7.1f} ms  {1000 * base / ms if ms else 0:5.2f}× the package's speed "
                      f"(paired time ratios {ratios[len(ratios) // 4]:.2f}–{ratios[3 * len(ratios) // 4]:.2f}), "
                      f"error against float64 {errors[name].item():.2g}{flag}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
