"""Which timm architectures ``CSRAScorer`` supports: every architecture with pretrained weights, random init.

Run: ``python benchmarks/compat.py --resume`` (1-2 h on 2 CPU cores; resumable), then
``python benchmarks/compat.py --resume --retry-failed --workers 1`` for models that ran out of
memory or time next to another worker.

For each architecture behind ``timm.list_models(pretrained=True)`` (tags dropped, so one row per
architecture) a worker process creates the model with random weights (``pretrained=False``, never a
download) at a small input, builds ``CSRAScorer`` on it and checks, on a random batch of 2:

- ``CSRAScorer(model, lam=0)(x)`` equals ``model(x)`` (≤ 1e-4),
- ``forward_head(forward_features(x))`` — the base the scorer uses for ``lam > 0`` — equals ``model(x)``,
- per-location logits are (B, C, L) with the L of the probe, on a grid of H * W = L cells that, for
  token models, is the grid measured in that same forward pass (``GridProbe``: the output shape of the
  patch embedding's conv, else of the last spatial activation) or a k x k merge of it — a measurement
  independent of ``posthoc_csra.heads``; the ``grid_check`` column says which, or "none" where nothing
  could be measured,
- ``lam=0.3`` gives finite (B, C) scores.

Any failure makes the row unsupported, with the reason. ``exact`` is the scorer's own probe result.

Input size: the smallest of 64, 96, 128, ... px that the model runs at with at least
``MIN_LOCATIONS`` locations (fewer would make ``exact`` trivially true). Models whose constructor
takes ``img_size`` (tokens / windowed models) are created for that size (64, 96, 128); other models
are created once and probed at growing sizes. If nothing small works, or the scorer rejects the
model at the small size, the model is created as registered and probed at its default
``pretrained_cfg`` input size; ``input_size`` in the CSV is the size the row's result comes from.

Weights: drawing random numbers is most of the time to create a big model on CPU, so while a model
is created its init's random fills copy from a pre-drawn pool (``FastInit``: same mean / std /
bounds per fill, numbers reused at random offsets). The architecture and forward are timm's own.
Classifier layers that timm initialises to zero (MLP-Mixer, ...) are re-drawn: with a zero
classifier every location has the same logits and ``exact`` would be trivially true. Feature
extractors registered with ``num_classes=0`` get timm's own 1000-class head (``num_classes=1000``),
as when such a backbone is fine-tuned as a classifier.

Each model runs in its own forked process (``--workers`` at a time, one torch thread each) with a
wall-clock ``--timeout`` and a memory limit (its share of RAM, never more than is free when it
starts). Rows whose worker ran out of time (``timeout``), memory (``out of memory``) or died
(``crashed``) say nothing about the scorer; they count as unsupported in the summary, which also
gives the rate among models that finished. Models that run out of memory are re-run alone at the
end of a run. Rows are appended to the CSV as they finish; ``--resume`` skips models already
there, ``--retry-failed`` re-runs timeout / out-of-memory / crashed rows.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import re
import resource
import shlex
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_CSV = RESULTS / "compat.csv"
DEFAULT_MD = RESULTS / "compat.md"

COLUMNS = ["model", "head_kind", "feature_format", "num_locations", "exact", "supported", "reason",
           "seconds", "input_size", "grid", "num_classes", "params_m", "grid_check", "measured_grid"]
# grid_check: how the scorer's grid was checked. Token (NLC) rows: against a grid measured in the forward
# pass (GridProbe) — "patch-embed conv", "last 4-D activation", or "none" (nothing measurable: only
# H * W = L is checked). Map rows (NCHW / NHWC): the grid is the map's own shape.
GRID_PATCH_EMBED = "patch-embed conv"
GRID_LAST_4D = "last 4-D activation"
GRID_NONE = "none"
GRID_MAP = "feature map shape"
# Rows written before the measured check existed: their token grids were compared with the model's stated
# grid by the implementation's own logic, which cannot catch a grid bug.
GRID_OLD = "implementation (old run)"
GRID_OLD_MAP = "feature map shape (old run)"
SMALL_SIZES = (64, 96, 128, 160, 192, 224)
# Unsupported at the small size for a reason no input size changes: no retry at the default size.
STRUCTURAL = ("model(x) returns", "forward_features returns list", "forward_features returns tuple",
              "forward_features returns dict")
MAX_IMG_SIZE = 128  # largest small size tried on models created for an img_size
MIN_LOCATIONS = 4
TOLERANCE = 1e-4
LAM = 0.3
BATCH = 2


# ----------------------------------------------------------------------------- worker side

class _SizeError(Exception):
    """The model does not run at this input size (or has too few locations there): try another."""


def _randomize_zero_layers(model) -> int:
    """Re-draw Linear / Conv weights that are all zero (zero-initialised classifiers); how many."""
    import torch
    from torch import nn

    count = 0
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and isinstance(weight, torch.Tensor) \
                    and weight.numel() and not weight.any():
                fan_in = max(1, weight[0].numel())
                weight.normal_(0.0, 1.0 / math.sqrt(fan_in))
                if getattr(module, "bias", None) is not None:
                    module.bias.normal_(0.0, 0.1)
                count += 1
    return count


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _max_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def _check(model, hw: Tuple[int, int], allow_few_locations: bool) -> Dict:
    """Probe one created model at ``hw`` = (H, W) px. Raises _SizeError when the size itself is the problem."""
    import torch
    from posthoc_csra.heads import UnsupportedModelError
    from posthoc_csra.scorer import CSRAScorer

    size = "%dx%d" % hw
    x = torch.randn(BATCH, 3, *hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        try:
            y = model(x)
        except Exception as err:  # noqa: BLE001
            raise _SizeError(f"model({BATCH}x3x{size}) failed: {_short(err, 200)}") from err
    row = {"input_size": f"3x{size}"}

    def unsupported(reason: str) -> Dict:
        row.update(supported=False, reason=reason)
        return row

    if not isinstance(y, torch.Tensor) or y.ndim != 2:
        return unsupported(f"model(x) returns {getattr(y, 'shape', type(y).__name__)}, not (B, num_classes) logits")
    try:
        scorer = CSRAScorer(model, lam=0.0, input_size=(3, *hw))
    except UnsupportedModelError as err:
        return unsupported(str(err))
    except Exception as err:  # noqa: BLE001 - a scorer bug, not a clean rejection: still a reason
        return unsupported(f"CSRAScorer raised {_short(err)}")
    row.update(num_classes=int(y.shape[1]), head_kind=scorer.head_kind, feature_format=scorer.feature_format,
               num_locations=scorer.probe_locations, exact=bool(scorer.exact))
    if scorer.probe_locations < MIN_LOCATIONS and not allow_few_locations:
        raise _SizeError(f"only {scorer.probe_locations} locations at {size} px")
    with torch.no_grad():
        try:
            base = scorer(x)
        except Exception as err:  # noqa: BLE001
            return unsupported(f"CSRAScorer(lam=0) failed: {_short(err)}")
        if base.shape != y.shape or _max_diff(base, y) > TOLERANCE:
            return unsupported(f"CSRAScorer(lam=0) != model(x) (max diff {_max_diff(base, y):.3g})")
        try:
            with GridProbe(model) as probe:
                out = scorer.forward_locations(x)
        except Exception as err:  # noqa: BLE001
            return unsupported(f"forward_locations failed on a batch of {BATCH}: {_short(err)}")
        scale = max(1.0, float(y.abs().max()))
        if out.logits.shape != y.shape or _max_diff(out.logits, y) > TOLERANCE * scale:
            return unsupported("forward_head(forward_features(x)) != model(x) "
                               f"(max diff {_max_diff(out.logits, y):.3g}): the scorer's base is not the model's output")
        expected = (BATCH, y.shape[1], scorer.probe_locations)
        if tuple(out.location_logits.shape) != expected:
            return unsupported(f"location_logits {tuple(out.location_logits.shape)} != {expected}")
        h, w = out.grid
        row["grid"] = f"{h}x{w}"
        if h * w != scorer.probe_locations:
            return unsupported(f"grid {h}x{w} does not hold {scorer.probe_locations} locations")
        if not scorer.feature_format.startswith("NLC"):
            row["grid_check"] = GRID_MAP
        else:
            method, source, measured = probe.measured()
            row["grid_check"] = method
            if measured is not None:
                row["measured_grid"] = "%dx%d (%s)" % (*measured, source)
                if not grid_fits((h, w), measured):
                    return unsupported(
                        f"grid {h}x{w} ({scorer.feature_format}) does not fit the measured {measured[0]}x"
                        f"{measured[1]} grid of {source} ({method}), nor a k x k merge of it")
        scorer.lam = LAM
        try:
            scores = scorer(x)
        except Exception as err:  # noqa: BLE001
            return unsupported(f"CSRAScorer(lam={LAM}) failed: {_short(err)}")
        if scores.shape != y.shape:
            return unsupported(f"CSRAScorer(lam={LAM}) returns {tuple(scores.shape)}, expected {tuple(y.shape)}")
        if not bool(torch.isfinite(scores).all()):
            return unsupported(f"CSRAScorer(lam={LAM}) returns non-finite scores")
    row.update(supported=True, reason="")
    return row


class GridProbe:
    """Measures the token grid in the real forward pass, independently of ``posthoc_csra.heads``.

    While active, forward hooks record the output shape of every spatial module (Conv2d, 2-D pooling)
    that runs inside the model's ``forward_features`` on the batch: (B, C, gh, gw). ``measured()`` picks

    - the patch embedding's ``proj`` conv, else the last spatial module inside the patch embedding (the
      first module named ``patch_embed`` that ran, e.g. ``patch_embed`` or ``encoder.patch_embed``):
      ``GRID_PATCH_EMBED``;
    - for models without one, the last spatial activation before the features are returned
      (``GRID_LAST_4D``);
    - nothing (``GRID_NONE``) when no spatial module ran on the batch (patches embedded by a Linear,
      or convs over per-patch pixels, (B * L, C, p, p), as in TNT).

    1 x 1 outputs (squeeze-excite, global pools) are no grid and are skipped.
    """

    def __init__(self, model):
        self.model = model
        self.events: List[Tuple[str, Tuple[int, int]]] = []
        self.batch: Optional[int] = None  # the batch size while forward_features runs, else None
        self.handles = []
        self.saved = None

    def __enter__(self) -> "GridProbe":
        from torch import nn

        spatial = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)

        def record(name):
            def hook(module, inputs, output):
                shape = getattr(output, "shape", None)
                if self.batch is not None and shape is not None and len(shape) == 4 \
                        and shape[0] == self.batch and shape[2] * shape[3] > 1:
                    self.events.append((name, (int(shape[2]), int(shape[3]))))
            return hook

        self.handles = [module.register_forward_hook(record(name))
                        for name, module in self.model.named_modules() if isinstance(module, spatial)]
        self.saved = self.model.__dict__.get("forward_features")
        original = self.model.forward_features

        def forward_features(x, *args, **kwargs):
            self.batch = int(x.shape[0])
            try:
                return original(x, *args, **kwargs)
            finally:
                self.batch = None

        self.model.forward_features = forward_features
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if self.saved is None:
            del self.model.forward_features
        else:
            self.model.forward_features = self.saved
        return False

    def measured(self) -> Tuple[str, str, Optional[Tuple[int, int]]]:
        """(method, module name, (gh, gw)) of the measured grid; (GRID_NONE, "", None) when none ran."""
        roots = [n.rpartition(".patch_embed.")[0] + ".patch_embed" if ".patch_embed." in n else "patch_embed"
                 for n, _ in self.events if n.startswith("patch_embed.") or ".patch_embed." in n]
        if roots:
            embed = [(n, g) for n, g in self.events if n.startswith(roots[0] + ".")]
            proj = [(n, g) for n, g in embed if n == roots[0] + ".proj"]
            name, grid = (proj or embed)[-1]
            return GRID_PATCH_EMBED, name, grid
        if self.events:
            name, grid = self.events[-1]
            return GRID_LAST_4D, name, grid
        return GRID_NONE, "", None


def grid_fits(grid: Tuple[int, int], measured: Tuple[int, int]) -> bool:
    """Is ``grid`` = (h, w) the measured (gh, gw) grid, or that grid merged k x k (gh = k h, gw = k w)?"""
    (h, w), (gh, gw) = grid, measured
    return h > 0 and w > 0 and gh % h == 0 and gw % w == 0 and gh // h == gw // w


class FastInit:
    """While active, the random fills of weight init copy from a pre-drawn pool (a memory copy
    instead of drawing every number; drawing is most of the time to create a big model on CPU).

    Each fill keeps its distribution's parameters: ``uniform_(a, b)``, ``normal_(mean, std)`` and
    timm's / torch's ``trunc_normal_(mean, std, a, b)``; only the numbers are reused (at random
    offsets) across and within tensors. The architecture and forward are the real ones.
    """

    POOL = 1 << 22

    def __init__(self, seed: int = 0):
        import random

        self.rng = random.Random(seed)
        self.pools = {}
        self.saved = []

    def _pool(self, kind: str):
        import torch

        if kind not in self.pools:
            gen = torch.Generator().manual_seed(self.rng.randrange(1 << 30))
            self.pools[kind] = (torch.rand if kind == "uniform" else torch.randn)(self.POOL, generator=gen)
        return self.pools[kind]

    def _fill(self, tensor, kind: str, scale: float, shift: float, lo=None, hi=None):
        import torch

        with torch.no_grad():
            n = tensor.numel()
            direct = tensor.is_contiguous() and tensor.dtype == torch.float32
            target = tensor.view(-1) if direct else torch.empty(n)
            pool = self._pool(kind)
            i = 0
            while i < n:  # chunks of at most half the pool, each from a random offset
                k = min(n - i, self.POOL // 2)
                start = self.rng.randrange(self.POOL - k + 1)
                torch.mul(pool[start:start + k], scale, out=target[i:i + k])
                i += k
            if shift:
                target.add_(shift)
            if lo is not None:
                target.clamp_(min=lo, max=hi)
            if not direct:
                tensor.copy_(target.view(tensor.shape))
        return tensor

    def __enter__(self):
        import torch
        import torch.nn.init as torch_init
        from timm.layers import weight_init

        def wrap(original, fast):
            def method(tensor, *args, **kwargs):
                if tensor.device.type != "cpu" or not tensor.is_floating_point():
                    return original(tensor, *args, **kwargs)
                kwargs.pop("generator", None)
                return fast(tensor, *args, **kwargs)
            return method

        uniform = wrap(torch.Tensor.uniform_, lambda t, a=0.0, b=1.0: self._fill(t, "uniform", b - a, a))
        normal = wrap(torch.Tensor.normal_, lambda t, mean=0.0, std=1.0: self._fill(t, "normal", std, mean))
        trunc = wrap(weight_init._trunc_normal_,
                     lambda t, mean, std, a, b: self._fill(t, "normal", std, mean, a, b))
        torch_trunc = wrap(torch_init._no_grad_trunc_normal_,
                           lambda t, mean, std, a, b: self._fill(t, "normal", std, mean, a, b))
        for owner, name, fast in ((torch.Tensor, "uniform_", uniform), (torch.Tensor, "normal_", normal),
                                  (weight_init, "_trunc_normal_", trunc),
                                  (torch_init, "_no_grad_trunc_normal_", torch_trunc)):
            self.saved.append((owner, name, owner.__dict__[name] if name in owner.__dict__ else getattr(owner, name)))
            setattr(owner, name, fast)
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self.saved):
            setattr(owner, name, original)
        self.saved.clear()
        self.pools.clear()
        return False


FAST_INIT = True


def _patch_size(model) -> Optional[int]:
    """The patch size of the model's first module with a ``patch_size`` (its patch embedding)."""
    for module in model.modules():
        size = getattr(module, "patch_size", None)
        if isinstance(size, (tuple, list)) and size and all(isinstance(v, int) for v in size):
            size = max(size)
        if isinstance(size, int) and size > 1:
            return size
    return None


def _create(arch: str, size: Optional[int], extra: Dict):
    """(model, took_img_size). ``size=None``: the model as registered (its default size)."""
    import contextlib

    import timm

    def create(**kwargs):
        with FastInit() if FAST_INIT else contextlib.nullcontext():
            return timm.create_model(arch, pretrained=False, **extra, **kwargs)

    if size is None:
        return create(), False
    try:
        return create(img_size=size), True
    except TypeError as err:
        if "img_size" not in str(err):
            raise
    return create(), False


def _prepare(model):
    model.eval()
    _randomize_zero_layers(model)
    return model


def probe_arch(arch: str) -> Dict:
    """Everything the CSV row needs for one architecture (run inside a worker)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    default_hw = tuple(int(v) for v in ((getattr(cfg, "input_size", None) or (3, 224, 224))[-2:]))
    # Feature extractors (num_classes=0: the head is Identity) get timm's own 1000-class head,
    # as when the backbone is fine-tuned as a classifier.
    extra = {} if getattr(cfg, "num_classes", 1000) else {"num_classes": 1000}
    row: Optional[Dict] = None
    model, sized, params = None, True, None
    sizes = [s for s in SMALL_SIZES if s < min(default_hw)]
    while sizes:
        size = sizes.pop(0)
        if sized and size > MAX_IMG_SIZE:
            break  # each img_size is a new model; past this the default size is as cheap
        if model is None or sized:  # models that take img_size are created for each size
            model = None
            try:
                model, sized = _create(arch, size, extra)
            except Exception:  # noqa: BLE001 - not at this img_size; the default is tried last
                continue
            model = _prepare(model)
            params = sum(p.numel() for p in model.parameters())
        try:
            row = _check(model, (size, size), allow_few_locations=False)
            break
        except _SizeError:
            row = None
            patch = _patch_size(model)
            if patch and size % patch:  # e.g. patch 14 models that want a multiple of it: 70 px
                fit = -(-size // patch) * patch
                if fit < min(default_hw) and fit not in sizes:
                    sizes.insert(0, fit)
    if row is not None and (row.get("supported") or row["reason"].startswith(STRUCTURAL)):
        row["params_m"] = round(params / 1e6, 2)
        return row
    small_row = row
    # The model as registered, at its default pretrained_cfg input size.
    if model is None or sized:
        model = None
        model = _prepare(_create(arch, None, extra)[0])
        params = sum(p.numel() for p in model.parameters())
    try:
        row = _check(model, default_hw, allow_few_locations=True)
    except _SizeError as err:
        row = {"input_size": "3x%dx%d" % default_hw, "supported": False,
               "reason": f"model does not run at its default input size: {err}"}
    if not row.get("supported") and small_row is not None and small_row.get("reason") != row.get("reason"):
        row["reason"] = f"{row['reason']} (at {small_row['input_size']}: {small_row['reason']})"
    row["params_m"] = round(params / 1e6, 2)
    return row


def _worker(arch: str, conn, threads: int, mem_bytes: Optional[int]) -> None:
    if mem_bytes:  # a model too big for its share fails fast with an allocation error, no swapping
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    try:  # if the machine runs out of memory anyway, the kernel kills this worker first
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    # Quiet: the model's prints and warnings would break the progress bar.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        row = probe_arch(arch)
    except MemoryError as err:
        row = {"supported": False, "reason": f"out of memory: {_short(err, 200)}"}
    except Exception as err:  # noqa: BLE001
        tb = traceback.extract_tb(err.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        if "can't allocate memory" in str(err) or "not enough memory" in str(err):
            row = {"supported": False, "reason": f"out of memory: {_short(err, 200)}"}
        else:
            row = {"supported": False, "reason": f"error creating/probing the model: {_short(err)}{where}"}
    if ("can't allocate memory" in row.get("reason", "") or "MemoryError" in row.get("reason", "")) and not row["reason"].startswith("out of memory"):
        row["reason"] = "out of memory: " + row["reason"]
    row["model"] = arch
    row["seconds"] = round(time.perf_counter() - start, 2)
    conn.send(row)
    conn.close()


# ----------------------------------------------------------------------------- driver side

def list_archs() -> List[str]:
    import timm
    from timm.models import get_arch_name

    return sorted({get_arch_name(name) for name in timm.list_models(pretrained=True)})


def read_rows(path: Path) -> List[Dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def csv_header(path: Path) -> List[str]:
    with path.open(newline="") as f:
        return next(csv.reader(f), [])


def is_failure(row: Dict) -> bool:
    """Rows that say nothing about the scorer: the worker ran out of time or memory, or died."""
    return row.get("reason", "").startswith(("timeout", "crashed", "out of memory"))


def meminfo(key: str = "MemTotal") -> int:
    """Bytes of ``key`` in /proc/meminfo (MemTotal, MemAvailable)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 16 << 30


OVERHEAD = 3 << 30  # address space of a worker (torch + timm) before any model
MARGIN = 3 << 29  # RAM left to everything else on the machine


def worker_memory_limit(share: int) -> int:
    """Address-space limit for a worker started now: its share, or what RAM is free now if less.

    The machine may be shared: a model that does not fit fails with an allocation error in its
    own worker instead of pushing other processes into the OOM killer."""
    return OVERHEAD + max(1 << 30, min(share, meminfo("MemAvailable") - MARGIN))


def _format(row: Dict) -> Dict:
    out = {key: row.get(key, "") for key in COLUMNS}
    for key in ("exact", "supported"):
        if isinstance(out[key], bool):
            out[key] = str(out[key])
    return out


def run_all(archs: List[str], csv_path: Path, workers: int, timeout: float, threads: int,
            mem_share: Optional[int]) -> List[Dict]:
    """Run ``archs`` in worker processes, appending one CSV row each; the rows."""
    from tqdm import tqdm

    ctx = mp.get_context("fork")
    write_header = not csv_path.is_file() or csv_path.stat().st_size == 0
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    pending = list(archs)
    active: Dict[str, Tuple] = {}  # arch -> (process, conn, start)
    supported = 0
    rows: List[Dict] = []
    with csv_path.open("a", newline="") as f, tqdm(total=len(archs), unit="model", dynamic_ncols=True) as bar:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if write_header:
            writer.writeheader()

        def finish(row: Dict) -> None:
            nonlocal supported
            writer.writerow(_format(row))
            f.flush()
            rows.append(row)
            supported += str(row.get("supported")) == "True"
            bar.update(1)
            bar.set_postfix(ok=supported, last=row["model"][:28])

        while pending or active:
            while pending and len(active) < workers:
                arch = pending.pop(0)
                parent, child = ctx.Pipe(duplex=False)
                mem = worker_memory_limit(mem_share) if mem_share else None
                proc = ctx.Process(target=_worker, args=(arch, child, threads, mem), daemon=True)
                proc.start()
                child.close()
                active[arch] = (proc, parent, time.perf_counter())
            waitables = [c for _, c, _ in active.values()] + [p.sentinel for p, _, _ in active.values()]
            mp.connection.wait(waitables, timeout=1.0)
            for arch, (proc, conn, start) in list(active.items()):
                elapsed = time.perf_counter() - start
                row = None
                if conn.poll():
                    try:
                        row = conn.recv()
                    except (EOFError, OSError):
                        row = None
                    proc.join(5)
                    if proc.is_alive():
                        proc.kill()
                if row is None and not proc.is_alive():
                    code = proc.exitcode
                    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    hint = " (signal 9: probably out of memory)" if code == -9 else ""
                    row = {"model": arch, "supported": False, "seconds": round(elapsed, 2),
                           "reason": f"crashed: worker {how}{hint}"}
                elif row is None and elapsed > timeout:
                    proc.kill()
                    proc.join(5)
                    row = {"model": arch, "supported": False, "seconds": round(elapsed, 2),
                           "reason": f"timeout: no result after {timeout:.0f} s"}
                if row is not None:
                    conn.close()
                    del active[arch]
                    finish(row)
    return rows


def old_grid_check(row: Dict) -> str:
    """``grid_check`` of a row written before that column existed."""
    if row.get("supported") != "True" and not row.get("grid"):
        return ""  # never reached the grid check
    return GRID_OLD if row.get("feature_format", "").startswith("NLC") else GRID_OLD_MAP


def compact_csv(path: Path) -> None:
    """One row per model (the latest), sorted by model, in ``COLUMNS`` (rows from before the grid check
    columns get ``old_grid_check``); atomic rewrite."""
    rows = {row["model"]: row for row in read_rows(path)}
    for row in rows.values():
        if row.get("grid_check") is None:
            row["grid_check"] = old_grid_check(row)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for name in sorted(rows):
            writer.writerow({key: rows[name].get(key, "") for key in COLUMNS})
    os.replace(tmp, path)


def reason_class(reason: str) -> str:
    """A reason with the model-specific numbers and names blanked, to group similar reasons."""
    text = reason.split(" (at 3x")[0]
    text = re.sub(r"\([^()]*\d[^()]*\)", "(...)", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    text = re.sub(r"'[^']*'", "'...'", text)
    return text[:140]


def summarize(rows: List[Dict], command: str) -> Tuple[str, str]:
    """(plain text, Markdown) summary of the CSV rows."""
    n = len(rows)
    ok = [r for r in rows if r["supported"] == "True"]
    bad = [r for r in rows if r["supported"] != "True"]
    failed = [r for r in bad if is_failure(r)]
    finished = n - len(failed)
    exact = sum(r["exact"] == "True" for r in ok)
    pct = lambda a, b: f"{100.0 * a / b:.1f} %" if b else "n/a"  # noqa: E731
    seconds = sum(float(r["seconds"] or 0) for r in rows)
    formats = Counter(r["feature_format"] for r in ok)
    kinds = Counter(r["head_kind"] for r in ok)
    sizes = Counter(r["input_size"] for r in ok)
    reasons = Counter(reason_class(r["reason"]) for r in bad)
    examples: Dict[str, List[str]] = {}
    for r in bad:
        examples.setdefault(reason_class(r["reason"]), []).append(r["model"])

    lines = [
        f"architectures: {n}",
        f"supported: {len(ok)} ({pct(len(ok), n)}); timeouts / out of memory / crashes ({len(failed)}) count as unsupported; "
        f"among the {finished} that finished: {pct(len(ok), finished)}",
        f"exact (mean of per-location logits = model logits): {exact} of {len(ok)} supported ({pct(exact, len(ok))})",
        f"worker time: {seconds / 3600:.2f} h in all (sum over models)",
    ]
    md = [
        "# CSRAScorer compatibility with timm architectures",
        "",
        "Rows from `python benchmarks/compat.py --resume` (resumable, 2 workers); rows that ran out of time "
        "or memory next to another worker re-run alone with `--retry-failed --workers 1`, rows of models "
        "whose handling changed re-run with `--redo PATTERN` (each replaces its old row); "
        f"this summary from `{command}`. timm {_timm_version()}, torch {_torch_version()}, "
        "random weights (`pretrained=False`), CPU. One row per architecture behind "
        "`timm.list_models(pretrained=True)` in `compat.csv`.",
        "",
        "A row is *supported* when `CSRAScorer` accepts the model and, on a random batch of 2 at the "
        "row's input size, `lam=0` reproduces `model(x)` (≤ 1e-4), `forward_head(forward_features(x))` "
        f"equals `model(x)`, per-location logits are (B, C, L) with a grid of L cells (token grids: checked "
        f"against a measured grid, see *Token grid check*), and `lam={LAM}` "
        "gives finite (B, C) scores. *exact*: the mean of the per-location logits equals the model's "
        "logits (pool → linear heads). Timeouts, out-of-memory and crashed workers count as unsupported.",
        "",
        "| | count | share |",
        "|---|---:|---:|",
        f"| architectures | {n} | |",
        f"| supported | {len(ok)} | {pct(len(ok), n)} |",
        f"| supported among finished (excl. {len(failed)} timeouts / out of memory / crashes) | {len(ok)} of {finished} | "
        f"{pct(len(ok), finished)} |",
        f"| exact (of supported) | {exact} | {pct(exact, len(ok))} |",
        f"| worker time, sum over models | {seconds / 3600:.2f} h | |",
        "",
    ]

    def table(title: str, counter: Counter, top: Optional[int] = None) -> None:
        lines.append(f"{title}:")
        md.extend([f"## {title}", "", "| | count |", "|---|---:|"])
        for key, count in counter.most_common(top):
            lines.append(f"  {count:5d}  {key}")
            md.append(f"| `{key}` | {count} |")
        md.append("")

    table("Supported by feature format", formats)
    table("Supported by head kind", kinds)
    table("Supported by input size used", sizes)
    grid_section(rows, lines, md)
    lines.append("Top unsupported reasons:")
    md.extend(["## Unsupported reasons", "", "| reason (numbers blanked) | count | e.g. |", "|---|---:|---|"])
    for key, count in reasons.most_common(15):
        eg = ", ".join(examples[key][:4])
        lines.append(f"  {count:5d}  {key}   e.g. {eg}")
        md.append(f"| {key.replace('|', '/')} | {count} | {eg} |")
    md.extend(["", "## All unsupported", "", "| model | reason |", "|---|---|"])
    for r in sorted(bad, key=lambda r: r["model"]):
        md.append(f"| {r['model']} | {r['reason'].replace('|', '/')} |")
    md.append("")
    return "\n".join(lines), "\n".join(md)


def grid_section(rows: List[Dict], lines: List[str], md: List[str]) -> None:
    """How the token (NLC) rows' grids were checked: measured in the forward pass, or the old check."""
    tokens = [r for r in rows if r["feature_format"].startswith("NLC")]
    by_check: Dict[str, List[str]] = {}
    for r in tokens:
        by_check.setdefault(r.get("grid_check") or "(not reached)", []).append(r["model"])
    old = by_check.get(GRID_OLD, [])
    new = [m for key, names in by_check.items() if key in (GRID_PATCH_EMBED, GRID_LAST_4D) for m in names]
    lines.append(f"Token (NLC) grid check: {len(new)} of {len(tokens)} rows against a grid measured in the "
                 f"forward pass, {len(by_check.get(GRID_NONE, []))} with nothing to measure, {len(old)} still "
                 f"carry the old check ({GRID_OLD})")
    md.extend([
        "## Token grid check",
        "",
        "For token (NLC) features the grid H×W is not in the feature shape, so it is checked against a "
        "grid *measured* in the same forward pass (forward hooks on the model's spatial modules, "
        "independent of `posthoc_csra.heads`): the output (B, D, gh, gw) of the patch embedding's "
        f"conv (`{GRID_PATCH_EMBED}`), else of the last conv / 2-D pooling that ran on the batch "
        f"(`{GRID_LAST_4D}`). A row passes when H×W is that grid or a k×k merge of it (gh = k·H, "
        f"gw = k·W) and H·W = L; `measured_grid` in the CSV names the module. `{GRID_NONE}`: no spatial "
        "module ran on the batch (patches embedded by a Linear, TNT's per-patch pixel convs), so only "
        f"H·W = L is checked. `{GRID_OLD}`: rows from runs before this check existed, whose grid was "
        "compared with the model's stated grid by the same logic the implementation uses — a check that "
        "cannot catch a grid bug; re-run them with `--redo PATTERN`.",
        "",
        "| grid check (NLC rows) | rows |",
        "|---|---:|",
    ])
    for key, names in sorted(by_check.items(), key=lambda kv: -len(kv[1])):
        md.append(f"| `{key}` | {len(names)} |")
    params = {r["model"]: float(r["params_m"]) for r in tokens if r.get("params_m")}
    smallest = min((params[m] for m in old if m in params), default=None)
    md.extend(["", f"**Re-checked against a measured grid** ({len(new)} rows, re-run since this check exists): "
               + (", ".join(sorted(new)) or "none"), ""])
    if by_check.get(GRID_NONE):
        md.extend([f"Re-run, but nothing to measure, `{GRID_NONE}` ({len(by_check[GRID_NONE])} rows, only H·W = L "
                   "checked): " + ", ".join(sorted(by_check[GRID_NONE])), ""])
    md.extend([f"**Still carrying the old check**, `{GRID_OLD}` ({len(old)} rows"
               + (f", all ≥ {smallest:g} M parameters" if smallest is not None else "") + "): "
               + (", ".join(sorted(old)) or "none"), ""])


def _timm_version() -> str:
    import timm

    return timm.__version__


def _torch_version() -> str:
    import torch

    return torch.__version__


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resume", action="store_true", help="skip models already in the CSV")
    parser.add_argument("--retry-failed", action="store_true",
                        help="with --resume: re-run models whose row is a timeout, out of memory or crash")
    parser.add_argument("--redo", default="",
                        help="fnmatch pattern(s), comma separated: re-run these models even if in the CSV")
    parser.add_argument("--limit", type=int, default=None, help="only the first N architectures (after --models)")
    parser.add_argument("--models", default="*", help="fnmatch pattern(s), comma separated (default: all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per model")
    parser.add_argument("--mem-gb", type=float, default=None,
                        help="memory share of a worker (default: RAM / workers; never more than is free "
                             "when it starts); models that run out are re-run alone at the end")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--md", type=Path, default=DEFAULT_MD)
    args = parser.parse_args(argv)
    command = "python benchmarks/compat.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    # Imported once here so that forked workers start warm.
    import timm  # noqa: F401
    import torch  # noqa: F401
    import posthoc_csra.scorer  # noqa: F401

    patterns = [p.strip() for p in args.models.split(",") if p.strip()]
    archs = [a for a in list_archs() if any(fnmatch.fnmatch(a, p) for p in patterns)]
    if args.limit is not None:
        archs = archs[:args.limit]
    if not args.resume and args.csv.is_file():
        args.csv.unlink()
    if args.csv.is_file() and csv_header(args.csv) != COLUMNS:
        compact_csv(args.csv)  # a CSV from an older column set: rewrite it before appending rows
    done = {}
    for row in read_rows(args.csv):
        done[row["model"]] = row
    redo = [p.strip() for p in args.redo.split(",") if p.strip()]
    todo = [a for a in archs if a not in done or (args.retry_failed and is_failure(done[a]))
            or any(fnmatch.fnmatch(a, p) for p in redo)]
    print(f"{len(archs)} architectures selected, {len(archs) - len(todo)} already in {args.csv}, "
          f"{len(todo)} to run ({args.workers} workers x {args.threads} threads, timeout {args.timeout:.0f} s)",
          flush=True)
    start = time.perf_counter()
    if args.mem_gb:
        mem = int(args.mem_gb * (1 << 30))
    else:
        mem = int((meminfo() - OVERHEAD) / max(1, args.workers))
    alone = meminfo()
    try:
        rows = run_all(todo, args.csv, args.workers, args.timeout, args.threads, mem)
        again = [r["model"] for r in rows if r.get("reason", "").startswith("out of memory")
                 or "signal 9" in r.get("reason", "")]
        if again and args.workers > 1:
            print(f"re-running {len(again)} models that ran out of memory, one at a time: {', '.join(again)}",
                  flush=True)
            run_all(again, args.csv, 1, args.timeout, max(args.threads, args.workers), alone)
    finally:
        if args.csv.is_file():
            compact_csv(args.csv)
    wall = time.perf_counter() - start
    rows = [r for r in read_rows(args.csv) if r["model"] in set(archs)]
    text, md = summarize(rows, command)
    print(text)
    print(f"wall time of this run: {wall / 60:.1f} min for {len(todo)} models")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
