"""Performance benchmark of post-hoc CSRA, in one process, on the same batches.

Run: ``python benchmarks/perf.py`` (CPU; about 35 minutes on 2 idle cores), or on a CUDA machine
``python benchmarks/perf.py --device cuda --amp bf16`` (its tables go into the GPU block of the same
report; the CPU part is kept). ``--dry-run`` runs every section once on tiny inputs with the given
flags and writes a throw-away report: a command line is checked in about a minute (the tests do it).

Sections (``--sections a,b,c,d``):

(a) ``CSRAScorer`` vs the plain ``model(x)`` forward, per model, on one fixed random
    (B, 3, S, S) batch with RANDOM weights (timing only needs the architecture), for every head
    set (1, 2, 4, 8) in both score spaces, each against the model's goal. Repetitions are
    interleaved (plain, every scorer, then the reverse order) and the overhead is the median of the
    per-repetition ratios scorer / plain. Beside it: the theoretical floor ``1 + L*d*C / MACs(model)``
    (the extra work is one (L x d)(d x C) product per image; the model's MACs come from
    ``torch.utils.flop_counter``), the FLOP-counted ratio of the two forwards, and an estimate from
    the parts (the extra work timed alone on fixed features, divided by the plain forward time).
(b) Images/s end to end on the real JPEGs: ``score_folder`` (the ``posthoc-csra score``
    library call, decode and DataLoader workers included, writing a CSV) vs an equivalent
    plain timm loop (same model loading, transform, ImageFiles + collate_images DataLoader,
    batch and workers; ``model(images)`` only), interleaved, medians. Real
    tf_efficientnet_lite0 weights from the shared weights manifest.
(c) The lambda-sweep speed of ``average_precision_sweep`` vs scikit-learn
    (``benchmarks/metric_speed.py``).
(d) ``bench``'s statistics pass (``bench.statistics_pass``: the first, uncached pass, both score
    spaces, every head's terms and the pooling baselines, cache chunks written) on real VOC2007 images
    at 448 px with tf_efficientnet_lite0's real weights, against a plain timm DataLoader + model loop
    over the same images and the backbone alone on pre-made tensors, interleaved; then one run over all
    2,000 shared VOC images with a per-stage breakdown and the resident memory as the images go by.

Every number in the report is measured by this script; nothing is typed in by hand.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import functools
import gc
import importlib
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from posthoc_csra import attention  # noqa: E402
from posthoc_csra import heads as _heads  # noqa: E402
from posthoc_csra.errors import InputError  # noqa: E402
from posthoc_csra.paths import shared_dir  # noqa: E402
from posthoc_csra.runtime import Runtime  # noqa: E402
from posthoc_csra.scorer import CSRAScorer, LocationOutput  # noqa: E402

DEFAULT_MODELS = ("resnet50", "vit_small_patch16_224", "tf_efficientnet_lite0")
#: Overhead goals of section (a), for every head set and space: scorer time / plain forward time.
GOALS = {"resnet50": 1.02, "vit_small_patch16_224": 1.03, "tf_efficientnet_lite0": 1.05}
END_TO_END_GOAL = 0.95
PIPELINE_MODEL = "tf_efficientnet_lite0"
HEAD_COUNTS = (1, 2, 4, 8)
SCORER_CONFIGS = tuple((f"heads={h}, {space}", h, space) for h in HEAD_COUNTS for space in ("logit", "prob"))
#: Section (a)'s name for the per-location logits + grid timed alone (the parts without the rule).
HEAD_PART = "per-location head"
#: The configurations whose Python calls are counted (the cheapest and the most work).
CALL_CONFIGS = ("heads=1, logit", "heads=8, prob")
LAM = 0.1
#: Section (d): the statistics pass, its goal against the plain timm loop, and "flat" memory.
STATS_GOAL = 0.95
FLAT_MB = 64.0
#: Shares of ``--budget`` for the timed repetitions of sections (a), (b) and (d); (c) has fixed sizes.
A_SHARE, B_SHARE, D_SHARE = 0.35, 0.2, 0.3
#: What ``--dry-run`` changes: tiny inputs, one repetition, everything else as given.
DRY_RUN = dict(models=["test_efficientnet", "test_vit"], batch_size=2, img_size=64, reps=1, min_reps=1, warmup=1,
               b_reps=1, min_reps_b=1, b_images=6, c_images=200, c_classes=20, c_lams=5, c_sklearn_lams=1,
               d_images=4, d_img_size=64, d_reps=1, min_reps_d=1, d_memory_images=6, budget=0.0)
GPU_START, GPU_END = "<!-- gpu:start -->", "<!-- gpu:end -->"
GPU_COMMAND = "python benchmarks/perf.py --device cuda --amp bf16"


# ----------------------------------------------------------------------------- helpers

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> Optional[float]:
    """Current resident set size of this process in MiB (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/statm") as fp:
            return int(fp.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None


def _maxrss_mb(who=resource.RUSAGE_SELF) -> float:
    """Peak RSS so far (ru_maxrss; KiB on Linux, bytes on macOS) in MiB."""
    value = resource.getrusage(who).ru_maxrss
    return value / 2 ** 20 if sys.platform == "darwin" else value / 2 ** 10


class PeakMemory:
    """Peak memory while the block runs: sampled RSS on CPU, max_memory_allocated on CUDA.

    Used across several blocks (``with peak: ...`` repeatedly), it keeps the maximum
    (``peak_mb``) and the largest rise above the memory in use when a block started
    (``growth_mb``: the transient working memory of the call).
    """

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device, self.interval = device, interval
        self.peak_mb: Optional[float] = None
        self.growth_mb: Optional[float] = None
        self._block_peak: Optional[float] = None
        self._stop = threading.Event()

    def _sample(self) -> None:
        while True:
            rss = _rss_mb()
            if rss is not None and (self._block_peak is None or rss > self._block_peak):
                self._block_peak = rss
            if self._stop.wait(self.interval):
                return

    def _current(self) -> Optional[float]:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2 ** 20
        return _rss_mb()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start = self._current()
        self._block_peak = self._start
        if self.device.type != "cuda":
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._block_peak = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        else:
            self._stop.set()
            self._thread.join()
            rss = _rss_mb()
            if rss is not None and (self._block_peak is None or rss > self._block_peak):
                self._block_peak = rss
        if self._block_peak is not None:
            self.peak_mb = self._block_peak if self.peak_mb is None else max(self.peak_mb, self._block_peak)
            if self._start is not None:
                growth = self._block_peak - self._start
                self.growth_mb = growth if self.growth_mb is None else max(self.growth_mb, growth)
        return False


def _timed(fn: Callable[[], object], device: torch.device):
    """(wall seconds, process CPU seconds) of one call."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def _quartiles(values: Sequence[float]):
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def _interleaved(fns: Dict[str, Callable[[], object]], reps: int, device: torch.device,
                 peaks: Optional[Dict[str, PeakMemory]] = None, deadline: Optional[float] = None,
                 min_reps: int = 1):
    """Time every function once per repetition, alternating the order (ABC, CBA, ...).

    Stops after ``reps`` repetitions, or earlier once ``time.perf_counter()`` passes
    ``deadline`` and at least ``min_reps`` were done. Returns {name: {"wall": [..], "cpu": [..]}}.
    """
    names = list(fns)
    times = {name: {"wall": [], "cpu": []} for name in names}
    for rep in range(reps):
        if deadline is not None and rep >= min_reps and time.perf_counter() > deadline:
            break
        for name in (names if rep % 2 == 0 else names[::-1]):
            if peaks is not None:
                with peaks[name]:
                    wall, cpu = _timed(fns[name], device)
            else:
                wall, cpu = _timed(fns[name], device)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
    return times


def _paired_ratio(num: Sequence[float], den: Sequence[float]):
    """Median and quartiles of the per-repetition ratios num[i] / den[i]."""
    ratios = [a / b for a, b in zip(num, den)]
    return statistics.median(ratios), _quartiles(ratios)


def _verdict(value: float, goal: Optional[float], q1: float, q3: float, kind: str) -> str:
    """PASS / FAIL of ``value`` against ``goal`` (``kind`` "max": value <= goal; "min": value >= goal).

    "(within noise)" is added when the goal lies inside the quartiles of the repetitions.
    """
    if goal is None:
        return ""
    ok = value <= goal if kind == "max" else value >= goal
    return ("PASS" if ok else "FAIL") + (" (within noise)" if q1 <= goal <= q3 else "")


def _python_calls(fn: Callable[[], object]) -> Dict[str, int]:
    """Calls made by one call of fn (``sys.setprofile``): "python" function calls ('call' events) and calls
    of C functions from Python ('c_call': tensor operations and builtins)."""
    count = {"python": 0, "c": 0}

    def profiler(frame, event, arg):
        if event == "call":
            count["python"] += 1
        elif event == "c_call":
            count["c"] += 1

    sys.setprofile(profiler)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def machine_info(device: torch.device) -> Dict[str, str]:
    import timm

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fp:
            for line in fp:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "CPU": f"{cpu}, {os.cpu_count()} logical cores ({usable} usable), torch threads {torch.get_num_threads()}",
        "Python / torch / timm": f"{platform.python_version()} / {torch.__version__} / {timm.__version__}",
        "OS": platform.platform(),
    }
    try:
        import psutil  # optional
        info["RAM"] = f"{psutil.virtual_memory().total / 2 ** 30:.1f} GiB"
    except ImportError:
        pass
    if device.type == "cuda":
        info["Device"] = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        info["Device"] = "CPU"
    return info


def _load() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


# ----------------------------------------------------------------------------- (a) overhead

def _flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def bench_overhead(name: str, args, runtime: Runtime, deadline: Optional[float] = None) -> dict:
    """Section (a) for one model: plain forward vs the scorer of every head set and space, interleaved,
    same batch."""
    import timm

    device = runtime.torch_device
    model = timm.create_model(name, pretrained=False).eval()  # random weights: timing only
    size = (3, args.img_size, args.img_size)
    scorers = {label: CSRAScorer(model, lam=LAM, heads=heads, space=space, input_size=size)
               for label, heads, space in SCORER_CONFIGS}
    first = scorers[SCORER_CONFIGS[0][0]]

    # Work counts, on one image, on the CPU, before any compile/device move.
    x1 = torch.randn((1, *size), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        feats1 = model.forward_features(x1)
        num_locations, dim = first.layout.locations(feats1).shape[1:]
        plain_flops = _flops(lambda: model(x1))
        scorer_flops = {label: _flops(lambda s=s: s(x1)) for label, s in scorers.items()}
        calls = {label: {b: _python_calls(lambda b=b: scorers[label](x1.expand(b, -1, -1, -1)))
                         for b in (1, min(4, args.batch_size))} for label in CALL_CONFIGS}
    num_classes = first.num_classes
    plain_macs = plain_flops / 2
    extra_macs = num_locations * dim * num_classes

    for scorer in scorers.values():
        runtime.prepare(scorer)  # moves the shared model (device, memory format)
    runtime.compile_model(model)
    x = torch.randn((args.batch_size, *size), generator=torch.Generator().manual_seed(1))
    x = runtime.inputs(x)

    fns = {"plain": lambda: model(x)}
    fns.update({label: (lambda s=s: s(x)) for label, s in scorers.items()})
    peaks = {label: PeakMemory(device) for label in fns}
    with torch.inference_mode(), runtime.autocast():
        for _ in range(args.warmup):
            for fn in fns.values():
                fn()
        times = _interleaved(fns, args.reps, device, peaks, deadline, min(args.min_reps, args.reps))

        # The extra work alone, on fixed features: per-location logits + grid + the rule; and the per-location
        # logits + grid alone (the same for every configuration), so the rule's share is their difference.
        features = model.forward_features(x)
        logits = model.forward_head(features)

        def locations(scorer):
            return (_heads.per_location_logits(model, scorer.layout, features),
                    scorer.layout.grid(features, model, tuple(x.shape[-2:])))

        def extra(scorer):
            return scorer.score_output(LocationOutput(logits, *locations(scorer)))

        part_fns = {HEAD_PART: lambda: locations(first)}
        part_fns.update({label: (lambda s=s: extra(s)) for label, s in scorers.items()})
        parts = _interleaved(part_fns, max(args.reps, 15), device)

    plain_wall = statistics.median(times["plain"]["wall"])
    goal = GOALS.get(name)
    rows = []
    for label in scorers:
        ratio, (q1, q3) = _paired_ratio(times[label]["wall"], times["plain"]["wall"])
        cpu_ratio, _ = _paired_ratio(times[label]["cpu"], times["plain"]["cpu"])
        extra_s = statistics.median(parts[label]["wall"])
        parts_ratio = 1 + extra_s / plain_wall
        rule_s = statistics.median(e - h for e, h in zip(parts[label]["wall"], parts[HEAD_PART]["wall"]))
        rows.append({
            "config": label,
            "plain_s": plain_wall,
            "scorer_s": statistics.median(times[label]["wall"]),
            "ratio": ratio, "q1": q1, "q3": q3,
            "cpu_ratio": cpu_ratio,
            "min_ratio": min(times[label]["wall"]) / min(times["plain"]["wall"]),
            "extra_s": extra_s,
            "head_s": statistics.median(parts[HEAD_PART]["wall"]),
            "rule_s": rule_s,
            "parts_ratio": parts_ratio,
            "flop_ratio": scorer_flops[label] / plain_flops,
            "verdict": _verdict(ratio, goal, q1, q3, "max"),
            "parts_verdict": ("PASS" if parts_ratio <= goal else "FAIL") if goal is not None else "",
            "peak_plain_mb": peaks["plain"].peak_mb,
            "peak_scorer_mb": peaks[label].peak_mb,
            "growth_plain_mb": peaks["plain"].growth_mb,
            "growth_scorer_mb": peaks[label].growth_mb,
        })
    return {
        "model": name, "L": int(num_locations), "d": int(dim), "C": int(num_classes),
        "plain_gmacs": plain_macs / 1e9,
        "floor": 1 + extra_macs / plain_macs,
        "feature_format": first.feature_format, "exact": first.exact,
        "calls": calls,
        "rows": rows, "goal": goal, "reps": len(times["plain"]["wall"]),
        "maxrss_mb": _maxrss_mb(),
    }


def section_a(args, runtime: Runtime, log) -> List[dict]:
    results = []
    start = time.perf_counter()
    share = args.budget * A_SHARE / max(1, len(args.models)) if args.budget else None
    for i, name in enumerate(args.models):
        t0 = time.perf_counter()
        deadline = start + share * (i + 1) if share else None
        r = bench_overhead(name, args, runtime, deadline)
        gc.collect()
        r["seconds"] = time.perf_counter() - t0
        results.append(r)
        worst = max(r["rows"], key=lambda row: row["ratio"])
        passed = sum(row["verdict"].startswith("PASS") for row in r["rows"])
        goal = (f"{passed}/{len(r['rows'])} configurations within the goal {r['goal']}" if r["goal"]
                else "no goal for this model")
        log(f"(a) {name} ({r['reps']} reps): plain {worst['plain_s']:.3f}s; largest ratio {worst['ratio']:.3f} "
            f"({worst['config']}), {goal} (floor {r['floor']:.3f})  [{r['seconds']:.0f}s]")
    return results


# ----------------------------------------------------------------------------- (b) end to end

def _image_folder(tmp: Path, repeat: int) -> Path:
    """The real JPEG folder, or a folder of ``repeat`` symlinked copies of it."""
    shared = shared_dir()
    if shared is None:
        raise SystemExit("section b needs the real images: set POSTHOC_CSRA_SHARED to the shared/ folder")
    source = shared / "data" / "imagenet-val-real" / "images"
    if not source.is_dir():
        raise SystemExit(f"section b: no image folder at {source}")
    if repeat <= 1:
        return source
    folder = tmp / "images"
    for k in range(repeat):
        sub = folder / f"copy{k}"
        sub.mkdir(parents=True)
        for path in sorted(source.iterdir()):
            if path.is_file():
                (sub / path.name).symlink_to(path.resolve())
    return folder


def _warm_up_folder(image_dir: Path, folder: Path, batch_size: int) -> Path:
    """Read every image once (page cache) and link the first ``batch_size`` + remainder of them
    into ``folder``: a warm-up run on it sees both batch shapes of the timed runs."""
    from posthoc_csra.images import find_images

    paths = find_images(image_dir)
    for path in paths:
        path.read_bytes()
    count = min(len(paths), batch_size + (len(paths) % batch_size or batch_size))
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths[:count]):
        (folder / f"{i:06d}{path.suffix}").symlink_to(path.resolve())
    return folder


def _first_images(image_dir: Path, folder: Path, count: int) -> Path:
    """A folder linking the first ``count`` images of ``image_dir`` (``--b-images``; the dry run)."""
    from posthoc_csra.images import find_images

    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(find_images(image_dir)[:count]):
        (folder / f"{i:06d}{path.suffix}").symlink_to(path.resolve())
    return folder


def _forward_loop(image_dir: Path, args, runtime: Runtime, rule: bool) -> int:
    """What ``score_folder`` does minus the table and the file: load, transform, DataLoader, then per batch
    ``model(images)`` (``rule=False``, the plain timm loop) or ``CSRAScorer(images)``; returns images scored."""
    from posthoc_csra.choices import DEFAULT_FULL_FRAME
    from posthoc_csra.prepare import data_transform
    from posthoc_csra.images import ImageFiles, collate_images, find_images
    from posthoc_csra.models import load_model

    paths = find_images(image_dir)
    model = load_model(PIPELINE_MODEL, **({"img_size": args.img_size} if args.img_size else {}))  # as score_folder
    transform, config = data_transform(model, args.img_size, full_frame=DEFAULT_FULL_FRAME)  # score_folder's default
    if rule:
        net = runtime.prepare(CSRAScorer(model, lam=LAM, heads=1, space="logit", input_size=config["input_size"]))
    else:
        net = runtime.prepare(model)
    runtime.compile_model(model)
    loader = torch.utils.data.DataLoader(ImageFiles(paths, image_dir, transform), batch_size=args.batch_size,
                                         num_workers=args.workers, collate_fn=collate_images,
                                         pin_memory=runtime.torch_device.type == "cuda")
    scores = np.full((len(paths), model.num_classes), np.nan, dtype=np.float32)
    with torch.inference_mode():
        for images, good, _failures in loader:
            if images is not None:
                with runtime.autocast():
                    out = net(runtime.inputs(images))
                scores[good] = out.float().cpu().numpy()
    return int(np.isfinite(scores[:, 0]).sum())


def plain_loop(image_dir: Path, args, runtime: Runtime) -> int:
    """The plain timm loop: the same loader and transform, ``model(images)`` only."""
    return _forward_loop(image_dir, args, runtime, rule=False)


def scorer_loop(image_dir: Path, args, runtime: Runtime) -> int:
    """The same loop with ``CSRAScorer`` instead of the model (no table, no file)."""
    return _forward_loop(image_dir, args, runtime, rule=True)


def section_b(args, runtime: Runtime, log) -> dict:
    import logging

    from posthoc_csra.choices import DEFAULT_FULL_FRAME
    from posthoc_csra.folder import score_folder
    from posthoc_csra.options import LoadOptions, RuleOptions, ScoreTableOptions

    logging.getLogger("posthoc_csra").setLevel(logging.WARNING)
    device = runtime.torch_device
    with tempfile.TemporaryDirectory(prefix="posthoc-csra-perf-") as tmp:
        tmp = Path(tmp)
        image_dir = _image_folder(tmp, args.b_repeat)
        if args.b_images:
            image_dir = _first_images(image_dir, tmp / "first", args.b_images)
        output = tmp / "scores.csv"

        def pipeline(image_dir=image_dir):
            result = score_folder(image_dir, PIPELINE_MODEL, RuleOptions(lam=LAM, heads=1, space="logit"),
                                  loading=LoadOptions(batch_size=args.batch_size, workers=args.workers, progress=False),
                                  runtime=runtime, img_size=args.img_size, full_frame=DEFAULT_FULL_FRAME,
                                  table_options=ScoreTableOptions(output=output))
            counts["score_folder"] = result.n_scored

        counts: Dict[str, int] = {}
        fns = {
            "plain timm loop": lambda: counts.__setitem__("plain timm loop", plain_loop(image_dir, args, runtime)),
            "score_folder": pipeline,
        }
        if args.b_scorer_loop:
            fns["loader + CSRAScorer"] = lambda: counts.__setitem__("loader + CSRAScorer",
                                                                    scorer_loop(image_dir, args, runtime))
        peaks = {name: PeakMemory(device) for name in fns}
        importlib.import_module("pandas")  # score_folder's import, outside the timings

        start = time.perf_counter()
        warm = _warm_up_folder(image_dir, tmp / "warm-up", args.batch_size)
        plain_loop(warm, args, runtime)
        pipeline(warm)
        log(f"(b) warm-up (file cache, imports, both paths on {len(list(warm.iterdir()))} images): "
            f"{time.perf_counter() - start:.1f}s")
        deadline = start + args.budget * B_SHARE if args.budget else None
        times = _interleaved(fns, args.b_reps, device, peaks, deadline, min(args.min_reps_b, args.b_reps))

    n_images = counts["plain timm loop"]
    plain = statistics.median(times["plain timm loop"]["wall"])
    rows = []
    for name in fns:
        ratio, (q1, q3) = _paired_ratio(times["plain timm loop"]["wall"], times[name]["wall"])
        cpu_ratio, _ = _paired_ratio(times["plain timm loop"]["cpu"], times[name]["cpu"])
        wall = statistics.median(times[name]["wall"])
        main = name == "score_folder"
        rows.append({"path": name, "images": counts[name], "seconds": wall, "ips": counts[name] / wall,
                     "ratio": ratio, "q1": q1, "q3": q3, "cpu_ratio": cpu_ratio,
                     "verdict": _verdict(ratio, END_TO_END_GOAL, q1, q3, "min") if main else "",
                     "cpu_verdict": ("PASS" if cpu_ratio >= END_TO_END_GOAL else "FAIL") if main else "",
                     "peak_mb": peaks[name].peak_mb,
                     "growth_mb": peaks[name].growth_mb,
                     "walls": times[name]["wall"]})
    result = {"rows": rows, "n_images": n_images, "plain_s": plain, "maxrss_mb": _maxrss_mb(),
              "reps": len(times["plain timm loop"]["wall"]),
              "children_maxrss_mb": _maxrss_mb(resource.RUSAGE_CHILDREN)}
    main = next(r for r in rows if r["path"] == "score_folder")
    log(f"(b) score_folder {main['ips']:.1f} img/s vs plain {n_images / plain:.1f} img/s "
        f"({result['reps']} reps): ratio {main['ratio']:.3f} {main['verdict']}; "
        f"main-process CPU ratio {main['cpu_ratio']:.3f} {main['cpu_verdict']}")
    return result


# ----------------------------------------------------------------------------- (c) metrics

def section_c(args, log) -> dict:
    from metric_speed import measure_sweep_speed

    r = measure_sweep_speed(n_images=args.c_images, n_classes=args.c_classes, n_lams=args.c_lams,
                            sklearn_lams=args.c_sklearn_lams)
    r["maxrss_mb"] = _maxrss_mb()
    log(f"(c) AP sweep {r['sweep_seconds']:.2f}s vs sklearn ~{r['sklearn_seconds_extrapolated']:.0f}s: "
        f"{r['speedup']:.1f}x")
    return r


# ----------------------------------------------------------------------------- (d) the statistics pass

def _voc_spec() -> str:
    shared = shared_dir()
    if shared is None:
        raise SystemExit("section d needs the real VOC2007 images: set POSTHOC_CSRA_SHARED to the shared/ folder")
    root = shared / "data" / "voc2007"
    if not root.is_dir():
        raise SystemExit(f"section d: no VOC2007 folder at {root}")
    return f"voc2007:{root}@trainval"


def _subset(spec: str, n: Optional[int], total: int) -> str:
    """The spec of ``n`` of the images (None or at least all: the whole dataset; else a seeded subset)."""
    return spec if not n or n >= total else f"subset:{n}:0:{spec}"


def _manifest() -> Path:
    shared = shared_dir()
    manifest = shared / "weights" / "manifest.json" if shared else None
    if manifest is None or not manifest.is_file():
        raise SystemExit("section d needs the shared weights manifest (POSTHOC_CSRA_SHARED/weights/manifest.json)")
    return manifest


class _Decoded(torch.utils.data.Dataset):
    """A benchmark dataset's images through a transform, nothing else (the plain timm loop's dataset)."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.transform(self.dataset[i][0])


class StatsPass:
    """The three paths of section (d) on one set of images, each timed from the same starting point: the
    model already in this process (loaded once, outside the timings, by every path), the images decoded
    from disk by DataLoader workers in the first two paths."""

    def __init__(self, spec: str, args, runtime: Runtime, workdir: Path, prepared=None):
        from posthoc_csra.options import LoadOptions, ModelSource
        from posthoc_csra.prepare import prepare_model
        from posthoc_csra.runner import build_dataset

        self.args, self.runtime, self.workdir, self.spec = args, runtime, workdir, spec
        self.source = ModelSource(checkpoint=str(_manifest()))
        self.loading = LoadOptions(batch_size=args.batch_size, workers=args.workers, progress=False)
        self.prepared = prepared or prepare_model(PIPELINE_MODEL, args.d_img_size, self.source)
        self.dataset = build_dataset(spec, self.prepared.img_size, self.loading)
        self.transform = self.prepared.preprocessing[bool(self.dataset.full_frame)][0]
        self.model = runtime.prepare(self.prepared.net)
        runtime.compile_model(self.model)
        self._tensors: Optional[List[torch.Tensor]] = None
        self._runs = 0

    @property
    def n_images(self) -> int:
        return len(self.dataset)

    def statistics(self, executor=None):
        """``bench``'s first pass: a fresh statistics cache every time (every chunk computed and written)."""
        from posthoc_csra.bench import statistics_pass

        self._runs += 1
        cache = self.workdir / f"cache-{self._runs}"
        try:
            return statistics_pass([PIPELINE_MODEL], [self.spec], self.loading, self.runtime,
                                   img_sizes=[self.args.d_img_size], source=self.source, cache_dir=cache,
                                   executor=executor)
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    def plain(self) -> int:
        """A plain timm loop over the same images: DataLoader (same transform, batch, workers) + ``model(x)``."""
        loader = torch.utils.data.DataLoader(_Decoded(self.dataset, self.transform), batch_size=self.args.batch_size,
                                             num_workers=self.args.workers,
                                             pin_memory=self.runtime.torch_device.type == "cuda")
        with torch.inference_mode():
            for x in loader:
                with self.runtime.autocast():
                    self.model(self.runtime.inputs(x))
        return self.n_images

    def backbone(self) -> int:
        """The model alone on the same images, decoded and batched beforehand (tensors on the device)."""
        if self._tensors is None:
            loader = torch.utils.data.DataLoader(_Decoded(self.dataset, self.transform),
                                                 batch_size=self.args.batch_size, num_workers=self.args.workers)
            self._tensors = [self.runtime.inputs(x) for x in loader]
        with torch.inference_mode():
            for x in self._tensors:
                with self.runtime.autocast():
                    self.model(x)
        return self.n_images


class Stages:
    """Wall seconds this process spends in each stage of a statistics pass, by timing the library functions
    that do them (patched for the duration of a ``with`` block; a stage inside itself counts once)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: Dict[str, float] = collections.defaultdict(float)
        self._depth: Dict[str, int] = collections.defaultdict(int)
        self._undo: list = []

    def _wrap(self, owner, attr: str, stage: str) -> None:
        original = getattr(owner, attr)
        stages = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if stages._depth[stage]:
                return original(*args, **kwargs)
            stages._depth[stage] += 1
            _sync(stages.device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                _sync(stages.device)
                stages.seconds[stage] += time.perf_counter() - start
                stages._depth[stage] -= 1

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def __enter__(self):
        from posthoc_csra import cache, heads, scorer, spaces
        from posthoc_csra.baselines import BASELINES

        self._wrap(scorer.CSRAScorer, "statistics", "scorer")
        self._wrap(scorer.CSRAScorer, "forward_locations", "forward")
        self._wrap(heads, "per_location_logits", "head")
        self._wrap(spaces.ScoreSpace, "location_statistics", "attention")
        for cls in {type(b) for b in BASELINES.values()}:
            self._wrap(cls, "logits", "baselines")
        self._wrap(cache.StatsCache, "write_chunk", "cache writes")
        return self

    def __exit__(self, *exc):
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()
        return False


def _rss_recorder(samples: list, base_executor_cls):
    """A local executor that records (images done, this process's RSS MiB, seconds) after every batch."""

    class Recorder(base_executor_cls):
        def run(self, task, jobs, progress=None):
            done, start = [0], time.perf_counter()

            def batch(job, n):
                done[0] += n
                samples.append((done[0], _rss_mb(), time.perf_counter() - start))
                if progress is not None:
                    progress(job, n)

            return super().run(task, jobs, batch)

    return Recorder()


def _memory_run(passes: StatsPass, log) -> dict:
    """One instrumented statistics pass over all the images: per-stage seconds, RSS as the images go by."""
    from posthoc_csra.executors import LocalExecutor

    samples: list = []
    peak = PeakMemory(passes.runtime.torch_device, interval=0.05)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu, wall = time.process_time(), time.perf_counter()
    with Stages(passes.runtime.torch_device) as stages, peak:
        run = passes.statistics(_rss_recorder(samples, LocalExecutor))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    decode_cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    s = stages.seconds
    breakdown = [
        ("backbone (forward_features + the model's head)", s["forward"] - s["head"]),
        ("per-location head (`heads.per_location_logits`)", s["head"]),
        ("attention terms and location means, both spaces (`ScoreSpace.location_statistics`)", s["attention"]),
        ("pooling baselines (max, avgmax, test-time pool)", s["baselines"]),
        ("rest of `CSRAScorer.statistics` (base softmax, copies)", s["scorer"] - s["forward"] - s["attention"]
         - s["baselines"]),
        ("cache writes (`StatsCache.write_chunk`: npz, sha256, fsync, rename)", s["cache writes"]),
        ("waiting for decoded batches, copies to numpy, driver bookkeeping (the rest)",
         wall - s["scorer"] - s["cache writes"]),
    ]
    n = passes.n_images
    marks = {}
    for share in (0.1, 0.25, 0.5, 0.75, 1.0):
        target = share * n
        marks[share] = next(((done, rss) for done, rss, _ in samples if done >= target), samples[-1][:2])
    start_rss, end_rss = marks[0.25][1], marks[1.0][1]
    growth = None if start_rss is None or end_rss is None else end_rss - start_rss
    # flat in the number of images: the highest RSS after any batch of the second half is no higher (within
    # FLAT_MB) than the highest of the first half, when the allocator has warmed up (two single samples, such
    # as 25 % and 100 %, also see where in its cycle of freeing and reusing batch buffers the heap happens to be)
    first = [rss for done, rss, _ in samples if done <= n / 2 and rss is not None]
    second = [rss for done, rss, _ in samples if done > n / 2 and rss is not None]
    halves = (max(first), max(second)) if first and second else None
    result = {"n_images": n, "wall": wall, "cpu": cpu, "decode_cpu": decode_cpu, "breakdown": breakdown,
              "chunks": run.chunks_computed, "marks": marks, "growth_mb": growth, "halves_mb": halves,
              "peak_mb": peak.peak_mb, "workers_maxrss_mb": _maxrss_mb(resource.RUSAGE_CHILDREN),
              "flat": halves is not None and halves[1] - halves[0] <= FLAT_MB}
    log(f"(d) memory run: {n} images in {wall:.0f}s ({n / wall:.2f} img/s); RSS {marks[0.25][1]:,.0f} MiB at 25% → "
        f"{end_rss:,.0f} MiB at 100%; highest in the first / second half "
        f"{'n/a' if halves is None else f'{halves[0]:,.0f} / {halves[1]:,.0f}'} MiB "
        f"({'flat' if result['flat'] else 'GROWING'}); peak {peak.peak_mb:,.0f} MiB")
    return result


def section_d(args, runtime: Runtime, log) -> dict:
    import logging

    from posthoc_csra.runner import build_dataset
    from posthoc_csra.options import LoadOptions

    logging.getLogger("posthoc_csra").setLevel(logging.WARNING)
    device = runtime.torch_device
    spec = _voc_spec()
    total = len(build_dataset(spec, None, LoadOptions()))
    with tempfile.TemporaryDirectory(prefix="posthoc-csra-perf-d-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        timed = StatsPass(_subset(spec, args.d_images, total), args, runtime, tmp)
        prepared = timed.prepared
        warm = StatsPass(_subset(spec, min(timed.n_images, 2 * args.batch_size), total), args, runtime, tmp / "warm",
                         prepared)
        warm.statistics(), warm.plain(), warm.backbone(), timed.backbone()  # imports, model, file cache, tensors
        log(f"(d) warm-up (model, imports, file cache, {timed.n_images} decoded images): "
            f"{time.perf_counter() - start:.1f}s")
        fns = {"statistics pass": timed.statistics, "plain timm loop": timed.plain, "backbone alone": timed.backbone}
        peaks = {name: PeakMemory(device) for name in fns}
        deadline = time.perf_counter() + args.budget * D_SHARE if args.budget else None
        times = _interleaved(fns, args.d_reps, device, peaks, deadline, min(args.min_reps_d, args.d_reps))
        del timed, warm
        gc.collect()
        memory = None
        if args.d_memory_images != 0:
            memory = _memory_run(StatsPass(_subset(spec, args.d_memory_images, total), args, runtime, tmp / "m",
                                           prepared), log)

    n = _subset_count(args.d_images, total)
    rows = []
    for name in fns:
        vs_plain, (q1, q3) = _paired_ratio(times["plain timm loop"]["wall"], times[name]["wall"])
        vs_backbone, (b1, b3) = _paired_ratio(times["backbone alone"]["wall"], times[name]["wall"])
        wall = statistics.median(times[name]["wall"])
        main = name == "statistics pass"
        rows.append({"path": name, "seconds": wall, "ips": n / wall, "vs_plain": vs_plain, "q1": q1, "q3": q3,
                     "vs_backbone": vs_backbone, "b1": b1, "b3": b3,
                     "verdict": _verdict(vs_plain, STATS_GOAL, q1, q3, "min") if main else "",
                     "peak_mb": peaks[name].peak_mb, "growth_mb": peaks[name].growth_mb,
                     "walls": times[name]["wall"]})
    result = {"rows": rows, "n_images": n, "total": total, "reps": len(times["statistics pass"]["wall"]),
              "memory": memory, "maxrss_mb": _maxrss_mb()}
    main = rows[0]
    log(f"(d) statistics pass {main['ips']:.2f} img/s = {main['vs_plain']:.3f}× the plain loop "
        f"({main['verdict']}), {main['vs_backbone']:.3f}× the backbone alone ({result['reps']} reps, {n} images)")
    return result


def _subset_count(n: Optional[int], total: int) -> int:
    return total if not n or n >= total else n


# ----------------------------------------------------------------------------- report

def _fmt_mb(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _bold(text: str) -> str:
    return f"**{text}**" if text else ""


def render(args, info, results, notes, started, elapsed) -> str:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    mem_what = "peak CUDA memory allocated" if cuda else "peak process RSS (sampled every 5 ms)"
    lines = ["# posthoc-csra performance benchmark", "",
             "Generated by `benchmarks/perf.py`; every number below is measured by that script.", "",
             f"- Command: `{' '.join(shlex.quote(a) for a in ['python', *sys.argv])}`",
             f"- Date: {started:%Y-%m-%d %H:%M:%S %Z}".rstrip(),
             f"- Run time: {elapsed:.0f} s"]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += [f"- Settings: device {args.device}, amp {args.amp}, channels_last {args.channels_last}, "
              f"compile {args.compile}, batch {args.batch_size}, {args.img_size} px, up to {args.reps} reps "
              f"in (a), {args.b_reps} in (b) and {args.d_reps} in (d) (at least {args.min_reps} / {args.min_reps_b} / "
              f"{args.min_reps_d}; time budget {f'{args.budget:.0f} s' if args.budget else 'off'}), "
              f"warm-up {args.warmup}" + (" — **dry run** (tiny inputs: checks the command, measures nothing)"
                                          if args.dry_run else "")]
    if notes:
        lines += ["", "**Notes**", ""] + [f"- {note}" for note in notes]

    if "a" in results:
        lines += ["", "## (a) Scorer overhead vs the plain forward", "",
                  f"Random weights (timing does not depend on them), one fixed random batch "
                  f"({args.batch_size}, 3, {args.img_size}, {args.img_size}), `torch.inference_mode`, "
                  f"{args.warmup} warm-up call(s) each, then interleaved repetitions "
                  f"(plain, every scorer, then the reverse order; count in the reps column). λ = {LAM}; every "
                  f"head set ({', '.join(map(str, HEAD_COUNTS))}) in both score spaces, each against the model's goal.",
                  "",
                  "- **ratio**: median over repetitions of scorer time / plain time of the same "
                  "repetition (wall clock), [quartiles]; **CPU ratio**: the same with process CPU time; "
                  "**min ratio**: fastest scorer call / fastest plain call.",
                  "- **parts**: 1 + (the extra work alone — per-location head, grid, rule — timed on fixed "
                  "features, median of at least 15 calls) / median plain time. Scorer − plain is exactly that "
                  "extra work, so this is the same ratio measured without subtracting two large noisy times. "
                  "**head / rule ms**: where the parts go, per batch: the per-location logits and grid timed "
                  "alone in the same repetitions (the same work for every configuration), and the median of the "
                  "parts minus that in each repetition (the rule: base, attention terms of every head, λ).",
                  "- **floor**: 1 + L·d·C / MACs(model): the one extra (L × d)·(d × C) product per image; "
                  "model MACs from `torch.utils.flop_counter.FlopCounterMode` on one forward. "
                  "**FLOP ratio**: counted FLOPs of the scorer forward / the plain forward (matrix products only: the "
                  "rule's element-wise work and reductions are not counted). (A time ratio "
                  "can be below the MAC floor when the model's own layers run less efficiently than one large GEMM.)",
                  "- **direct** / **by parts**: the goal checked on the ratio / on parts; \"(within noise)\" "
                  "when the goal lies inside the ratio's quartiles.",
                  f"- **memory**: {mem_what} during the timed calls, MiB, and in brackets its largest "
                  "rise above the memory in use when a call started (the call's working memory); plain first.", "",
                  "| model | L | d | C | GMACs/img | reps | config | plain s | scorer s | ratio [q1–q3] "
                  "| CPU ratio | min ratio | parts | head / rule ms | floor | FLOP ratio | goal | direct | by parts "
                  "| memory plain / scorer |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
        for r in results["a"]:
            for i, row in enumerate(r["rows"]):
                first = i == 0
                head = (f"| {r['model']} | {r['L']} | {r['d']} | {r['C']} | {r['plain_gmacs']:.2f} | {r['reps']} "
                        if first else "| | | | | | ")
                goal = f"≤ {r['goal']:.2f}" if r["goal"] else ""
                lines.append(
                    f"{head}| {row['config']} | {row['plain_s']:.3f} | {row['scorer_s']:.3f} "
                    f"| {row['ratio']:.3f} [{row['q1']:.3f}–{row['q3']:.3f}] | {row['cpu_ratio']:.3f} "
                    f"| {row['min_ratio']:.3f} | {row['parts_ratio']:.3f} "
                    f"| {1000 * row['head_s']:.1f} / {1000 * row['rule_s']:.1f} | {r['floor']:.3f} "
                    f"| {row['flop_ratio']:.3f} | {goal} | {_bold(row['verdict'])} | {_bold(row['parts_verdict'])} "
                    f"| {_fmt_mb(row['peak_plain_mb'])} (+{_fmt_mb(row['growth_plain_mb'])}) / "
                    f"{_fmt_mb(row['peak_scorer_mb'])} (+{_fmt_mb(row['growth_scorer_mb'])}) |")
        verdicts = [row["verdict"] for r in results["a"] for row in r["rows"] if r["goal"]]
        parts = [row["parts_verdict"] for r in results["a"] for row in r["rows"] if r["goal"]]
        if verdicts:
            lines += ["", f"Within the goal: **{sum(v.startswith('PASS') for v in verdicts)} of {len(verdicts)}** "
                          f"configurations directly, **{sum(v == 'PASS' for v in parts)} of {len(parts)}** by parts."]
        lines += ["", "Hot path check: calls made by one scorer forward (`sys.setprofile`) at two batch sizes: "
                      "Python function calls, and calls of C functions from Python (tensor operations). Equal Python "
                      "counts mean no per-image Python loop; on the CPU the rule's attention terms work through "
                      f"cache-sized blocks (about {attention.BLOCK_ELEMENTS // 1024}K (temperature, image, class, "
                      "location) values: whole images, or classes of one image), so its tensor calls grow with "
                      "B·C·L (not with a Python function per image).", "",
                      "| model | features | exact mean | config | Python calls (batch sizes) | tensor calls "
                      "(batch sizes) | per-image Python loop |",
                      "|---|---|---|---|---|---|---|"]
        for r in results["a"]:
            for label, calls in r["calls"].items():
                py = ", ".join(f"{c['python']} (B={b})" for b, c in calls.items())
                cc = ", ".join(f"{c['c']} (B={b})" for b, c in calls.items())
                loop = "none" if len({c["python"] for c in calls.values()}) == 1 else "**yes**"
                lines.append(f"| {r['model']} | {r['feature_format']} | {r['exact']} | {label} | {py} | {cc} "
                             f"| {loop} |")

    if "b" in results:
        b = results["b"]
        repeat = f" × {args.b_repeat}" if args.b_repeat > 1 else ""
        lines += ["", "## (b) End to end: `score_folder` vs a plain timm loop", "",
                  f"{b['n_images']} real JPEGs (`imagenet-val-real`{repeat}), {PIPELINE_MODEL} with its real "
                  f"weights (shared weights manifest), timm's eval transform (the whole frame, `score`'s default), "
                  f"`ImageFiles` + `collate_images` "
                  f"DataLoader, batch {args.batch_size}, {args.workers} workers. Each path is timed end to end "
                  f"(model load, loader and worker start-up, decode, forward); after a warm-up (every file "
                  f"read once, both paths run on one full and one remainder batch), {b['reps']} interleaved "
                  f"repetitions, medians.", "",
                  "- **plain timm loop**: load the model, build the same loader, `model(images)` only.",
                  f"- **score_folder**: the `posthoc-csra score` library call (heads=1, logit, λ={LAM}), "
                  "results table written to a CSV file.",
                  *(["- **loader + CSRAScorer**: the plain loop with the scorer in place of the model "
                     "(no table, no file)."] if len(b["rows"]) > 2 else []),
                  "- **vs plain**: median over repetitions of plain time / path time of the same repetition "
                  "(the images/s ratio), [quartiles]; **CPU vs plain**: the same with the main process's CPU "
                  "time (decoding runs in the workers, so this is the model + rule + bookkeeping share).",
                  "- **direct** / **by CPU**: the goal checked on each.", "",
                  f"| path | images | median s | images/s | vs plain [q1–q3] | CPU vs plain | goal | direct "
                  f"| by CPU | {'peak CUDA MiB (+ rise)' if cuda else 'peak RSS MiB, main process (+ rise)'} |",
                  "|---|---:|---:|---:|---:|---:|---:|---|---|---:|"]
        for row in b["rows"]:
            goal = f"≥ {END_TO_END_GOAL:.2f}" if row["verdict"] else ""
            lines.append(f"| {row['path']} | {row['images']} | {row['seconds']:.2f} | {row['ips']:.1f} "
                         f"| {row['ratio']:.3f} [{row['q1']:.3f}–{row['q3']:.3f}] | {row['cpu_ratio']:.3f} "
                         f"| {goal} | {_bold(row['verdict'])} | {_bold(row['cpu_verdict'])} "
                         f"| {_fmt_mb(row['peak_mb'])} (+{_fmt_mb(row['growth_mb'])}) |")
        lines += ["", "Wall times per repetition (s): " + "; ".join(
            f"{row['path']}: " + ", ".join(f"{t:.1f}" for t in row["walls"]) for row in b["rows"]) + ".",
            "", f"Peak RSS of a DataLoader worker process (ru_maxrss of children): "
            f"{_fmt_mb(b['children_maxrss_mb'])} MiB."]

    if "c" in results:
        c = results["c"]
        lines += ["", "## (c) λ-sweep speed of the metrics vs scikit-learn", "",
                  f"`benchmarks/metric_speed.measure_sweep_speed`: {c['n_images']} images × {c['n_classes']} "
                  f"classes × {c['n_lams']} λ values, synthetic seeded multi-label data. scikit-learn "
                  f"(`average_precision_score` once per class per λ) timed on {c['sklearn_lams_timed']} of the λ "
                  f"values and extrapolated linearly to the sweep.", "",
                  "| method | s / λ | s / sweep |", "|---|---:|---:|",
                  f"| `average_precision_sweep` | {c['sweep_seconds_per_lam']:.4f} | {c['sweep_seconds']:.2f} |",
                  f"| scikit-learn (extrapolated) | {c['sklearn_seconds_per_lam']:.4f} "
                  f"| {c['sklearn_seconds_extrapolated']:.1f} |", "",
                  f"Speed-up **{c['speedup']:.1f}×**; max |AP difference| on the shared λ values "
                  f"{c['max_abs_diff']:.1e}."]

    if "d" in results:
        lines += _render_d(args, results["d"], cuda)

    lines += ["", "## Peak memory by section", "",
              "ru_maxrss of this process after each section (cumulative peak, MiB)"
              + ("; CUDA peaks are in the tables above." if cuda else "."), "",
              "| after section | peak RSS MiB |", "|---|---:|"]
    for key in ("a", "b", "c", "d"):
        if key in results:
            value = results[key][-1]["maxrss_mb"] if key == "a" else results[key]["maxrss_mb"]
            lines.append(f"| {key} | {_fmt_mb(value)} |")
    return "\n".join(lines) + "\n"


def _render_d(args, d, cuda: bool) -> List[str]:
    unit = "peak CUDA MiB (+ rise)" if cuda else "peak RSS MiB, main process (+ rise)"
    lines = ["", "## (d) `bench`'s statistics pass vs a plain timm loop and the backbone alone", "",
             f"{d['n_images']} of the {d['total']} shared VOC2007 trainval images (`subset:{d['n_images']}:0:voc2007:…`"
             f" when fewer), the whole frame at {args.d_img_size} px, {PIPELINE_MODEL} with its real weights, batch "
             f"{args.batch_size}, {args.workers} DataLoader workers, {d['reps']} interleaved repetitions after a "
             f"warm-up (model in memory, imports, file cache); medians.", "",
             "- **statistics pass**: `bench.statistics_pass` — `bench`'s first, uncached pass: every cache chunk "
             "computed (logits, both score spaces' location means and attention terms at every temperature, the "
             "pooling baselines) and written, into a fresh cache each repetition (local executor: one DataLoader "
             "for the pass).",
             "- **plain timm loop**: a DataLoader over the same images (same transform, batch, workers) and "
             "`model(x)`, nothing kept.",
             "- **backbone alone**: `model(x)` on the same images decoded and batched beforehand.",
             "- **vs plain** / **vs backbone**: median over repetitions of that path's time / this path's time "
             "(the images/s ratio), [quartiles].", "",
             f"| path | median s | images/s | vs plain [q1–q3] | vs backbone [q1–q3] | goal | direct | {unit} |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for row in d["rows"]:
        goal = f"≥ {STATS_GOAL:.2f}" if row["verdict"] else ""
        lines.append(f"| {row['path']} | {row['seconds']:.2f} | {row['ips']:.2f} "
                     f"| {row['vs_plain']:.3f} [{row['q1']:.3f}–{row['q3']:.3f}] "
                     f"| {row['vs_backbone']:.3f} [{row['b1']:.3f}–{row['b3']:.3f}] | {goal} "
                     f"| {_bold(row['verdict'])} | {_fmt_mb(row['peak_mb'])} (+{_fmt_mb(row['growth_mb'])}) |")
    lines += ["", "Wall times per repetition (s): " + "; ".join(
        f"{row['path']}: " + ", ".join(f"{t:.1f}" for t in row["walls"]) for row in d["rows"]) + "."]
    m = d.get("memory")
    if m:
        n, wall = m["n_images"], m["wall"]
        lines += ["", f"### Where the time goes, and memory, on all {n} images", "",
                  f"One statistics pass over {n} images ({m['chunks']} cache chunks): {wall:.0f} s, "
                  f"{n / wall:.2f} images/s (with the stage timers: `torch` calls synchronised on CUDA). Seconds "
                  f"this process spends in each stage, timed around the library functions that do them; decoding "
                  f"runs in the DataLoader workers, overlapped with all of it.", "",
                  "| stage | s | share of the pass | ms / image |", "|---|---:|---:|---:|"]
        for stage, seconds in m["breakdown"]:
            lines.append(f"| {stage} | {seconds:.1f} | {100 * seconds / wall:.1f} % | {1000 * seconds / n:.1f} |")
        lines += [f"| decode + transform in the {args.workers} DataLoader workers (CPU s, overlapped) "
                  f"| {m['decode_cpu']:.1f} | | {1000 * m['decode_cpu'] / n:.1f} |",
                  f"| this process's CPU time (all threads) | {m['cpu']:.1f} | | {1000 * m['cpu'] / n:.1f} |", "",
                  "Resident memory of this process as the images go by (after the batch that reaches each "
                  "share). Flat in the number of images means: the highest RSS after any batch of the second "
                  f"half is at most {FLAT_MB:.0f} MiB above the highest of the first half (one chunk at a time "
                  "is kept; a streamed pass hands freed heap memory back to the OS, "
                  "`runtime.release_host_memory`, after every batch on the CPU and after every chunk on any "
                  "device).", "",
                  "| images done | " + " | ".join(f"{int(share * 100)} %" for share in m["marks"]) + " |",
                  "|---|" + "---:|" * len(m["marks"]),
                  "| RSS MiB | " + " | ".join(_fmt_mb(rss) for _, rss in m["marks"].values()) + " |", "",
                  f"From 25 % to 100 % of the images: {m['growth_mb']:+,.0f} MiB. Highest after a batch, first "
                  f"half / second half: {_halves(m['halves_mb'])} — **{'flat' if m['flat'] else 'GROWING'}**. Peak ({'CUDA allocated' if cuda else 'sampled RSS'}): "
                  f"{_fmt_mb(m['peak_mb'])} MiB; largest DataLoader worker (ru_maxrss of children): "
                  f"{_fmt_mb(m['workers_maxrss_mb'])} MiB."]
    return lines


def _halves(halves) -> str:
    if halves is None:
        return "n/a"
    return f"{_fmt_mb(halves[0])} / {_fmt_mb(halves[1])} MiB ({halves[1] - halves[0]:+,.0f} MiB)"


def print_tables(results, log) -> None:
    if "a" in results:
        log("")
        log(f"{'model':<24}{'config':<17}{'plain s':>9}{'scorer s':>10}{'ratio':>8}{'parts':>8}"
            f"{'floor':>8}{'goal':>7}  direct / by parts")
        for r in results["a"]:
            for i, row in enumerate(r["rows"]):
                goal = f"{r['goal']:.2f}" if r["goal"] else ""
                verdict = f"{row['verdict']} / {row['parts_verdict']}" if goal else ""
                log(f"{r['model'] if i == 0 else '':<24}{row['config']:<17}{row['plain_s']:>9.3f}"
                    f"{row['scorer_s']:>10.3f}{row['ratio']:>8.3f}{row['parts_ratio']:>8.3f}{r['floor']:>8.3f}"
                    f"{goal:>7}  {verdict}")
    if "b" in results:
        log("")
        log(f"{'path':<24}{'images':>7}{'img/s':>9}{'vs plain':>10}{'CPU':>8}  direct / by CPU")
        for row in results["b"]["rows"]:
            verdict = f"{row['verdict']} / {row['cpu_verdict']}" if row["verdict"] else ""
            log(f"{row['path']:<24}{row['images']:>7}{row['ips']:>9.1f}{row['ratio']:>10.3f}"
                f"{row['cpu_ratio']:>8.3f}  {verdict}")
    if "c" in results:
        c = results["c"]
        log("")
        log(f"AP λ-sweep {c['n_images']}x{c['n_classes']}x{c['n_lams']}: {c['sweep_seconds']:.2f}s vs sklearn "
            f"{c['sklearn_seconds_extrapolated']:.1f}s (extrapolated): {c['speedup']:.1f}x")
    if "d" in results:
        log("")
        log(f"{'path':<24}{'img/s':>9}{'vs plain':>10}{'vs backbone':>13}  goal")
        for row in results["d"]["rows"]:
            log(f"{row['path']:<24}{row['ips']:>9.2f}{row['vs_plain']:>10.3f}{row['vs_backbone']:>13.3f}  "
                f"{row['verdict']}")


# ----------------------------------------------------------------------------- the report file

def _gpu_block(text: Optional[str]) -> str:
    """The GPU part of the report between its markers: a GPU run's report, one heading level down, or a line
    saying how to make it."""
    if text is None:
        body = ["## GPU", "", f"No GPU run yet. On a CUDA machine: `{GPU_COMMAND}` writes its tables here "
                              "(the CPU part above is kept)."]
    else:
        body = ["## GPU run", ""] + [("#" + line if line.startswith("#") else line)
                                      for line in text.rstrip("\n").splitlines()[1:]]
    return "\n".join([GPU_START, *body, GPU_END]) + "\n"


def merge_report(existing: Optional[str], report: str, cuda: bool) -> str:
    """The report file after a run: a CPU run replaces everything but the GPU block (kept as it was), a CUDA
    run replaces only the GPU block (the CPU part is kept)."""
    existing = existing or ""
    pattern = re.compile(re.escape(GPU_START) + ".*?" + re.escape(GPU_END) + r"\n?", re.S)
    found = pattern.search(existing)
    if cuda:
        cpu_part = pattern.sub("", existing).rstrip("\n") if existing.strip() else (
            "# posthoc-csra performance benchmark\n\nNo CPU run yet: `python benchmarks/perf.py`.")
        return cpu_part + "\n\n" + _gpu_block(report)
    gpu = found.group(0) if found else _gpu_block(None)
    return report.rstrip("\n") + "\n\n" + gpu.rstrip("\n") + "\n"


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="autocast dtype")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone (forward_features)")
    p.add_argument("--dry-run", action="store_true",
                   help="every section once on tiny inputs (tiny models, a few images, one repetition) with the other "
                        "flags as given, report to a temporary file unless --output: checks a command line")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions in (a); 9 on CPU, 30 on CUDA when not given")
    p.add_argument("--min-reps", type=int, default=5, help="repetitions in (a) done even past the time budget")
    p.add_argument("--budget", type=float, default=2100.0,
                   help="soft time budget in seconds: (a), (b) and (d) stop repeating (after the minimum) once their "
                        f"shares ({A_SHARE * 100:.0f}%%, {B_SHARE * 100:.0f}%%, {D_SHARE * 100:.0f}%%) are spent; "
                        "0 = off")
    p.add_argument("--warmup", type=int, default=None,
                   help="warm-up calls per path in (a); 1, or 3 with --compile or CUDA, when not given")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated timm names for (a)")
    p.add_argument("--sections", default="a,b,c,d", help="any of a,b,c,d")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers in (b) and (d)")
    p.add_argument("--b-reps", type=int, default=None, help="timed repetitions in (b); 9 when not given")
    p.add_argument("--min-reps-b", type=int, default=9, help="repetitions in (b) done even past the budget")
    p.add_argument("--b-repeat", type=int, default=1, help="use the 530 JPEGs this many times in (b)")
    p.add_argument("--b-images", type=int, default=0, help="use only the first N JPEGs in (b) (0: all)")
    p.add_argument("--b-scorer-loop", action="store_true",
                   help="(b) also times the plain loop with CSRAScorer in place of the model")
    p.add_argument("--c-images", type=int, default=5000)
    p.add_argument("--c-classes", type=int, default=1000)
    p.add_argument("--c-lams", type=int, default=101)
    p.add_argument("--c-sklearn-lams", type=int, default=3, help="λ values scikit-learn is timed on")
    p.add_argument("--d-images", type=int, default=200, help="VOC2007 images the three paths of (d) are timed on")
    p.add_argument("--d-img-size", type=int, default=448, help="input size in (d)")
    p.add_argument("--d-reps", type=int, default=5, help="timed repetitions in (d)")
    p.add_argument("--min-reps-d", type=int, default=3, help="repetitions in (d) done even past the budget")
    p.add_argument("--d-memory-images", type=int, default=None,
                   help="images of the instrumented run of (d) (breakdown, memory); default all 2,000; 0 = skip it")
    p.add_argument("--threads", default="auto",
                   help="torch threads: a number, or auto = torch's default, but 1 when the 1-minute load "
                        "average is at least the core count (on a busy machine every multi-threaded OpenMP "
                        "region waits for descheduled threads, which swamps the timings)")
    p.add_argument("--output", default=None,
                   help="Markdown report (default benchmarks/results/perf.md; a CUDA run writes its GPU block there)")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if bad := sorted(set(args.sections) - {"a", "b", "c", "d"}):
        p.error(f"--sections: unknown {bad}; use a,b,c,d")
    try:  # the device and AMP are checked before any work: a CUDA command on a machine without CUDA says so
        Runtime(device=args.device, amp=args.amp, channels_last=args.channels_last, compile=args.compile)
    except InputError as err:
        p.error(f"--device {args.device} / --amp {args.amp}: {err}. Run a CUDA command line on a CUDA machine "
                f"(`{GPU_COMMAND}`), or check it here with --device cpu and the same other flags (--dry-run)")
    cuda = args.device.startswith("cuda")
    if args.dry_run:
        for key, value in DRY_RUN.items():
            setattr(args, key, value)
        if args.output is None:
            args.output = str(Path(tempfile.mkdtemp(prefix="posthoc-csra-perf-dry-run-")) / "perf.md")
    if args.reps is None:
        args.reps = 30 if cuda else 9
    if args.warmup is None:
        args.warmup = 3 if (cuda or args.compile) else 1
    if args.b_reps is None:  # end-to-end runs here vary by up to ±10 %: 9 pairs for a stable median
        args.b_reps = 9
    if args.output is None:
        args.output = str(HERE / "results" / "perf.md")
    return args


def _set_threads(setting: str) -> Optional[str]:
    """Apply ``--threads``; returns a note for the report when auto chose fewer threads."""
    if setting != "auto":
        torch.set_num_threads(int(setting))
        return None
    load, cores = _load(), os.cpu_count() or 1
    if load is not None and load >= cores and torch.get_num_threads() > 1:
        default = torch.get_num_threads()
        torch.set_num_threads(1)
        return (f"`--threads auto` chose 1 torch thread (torch's default is {default}): the 1-minute load "
                f"average was {load:.1f} on {cores} cores at the start. On a busy machine each multi-threaded "
                f"OpenMP region waits for descheduled threads, which measures the scheduler rather than "
                f"the work. Both sides of every "
                f"ratio use the same setting; pass `--threads N` to force N.")
    return None


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads_note = _set_threads(args.threads)
    runtime = Runtime(device=args.device, amp=args.amp, channels_last=args.channels_last, compile=args.compile)
    device = runtime.torch_device
    started = datetime.datetime.now().astimezone()
    t0 = time.perf_counter()

    def log(message: str) -> None:
        print(message, flush=True)

    info = machine_info(device)
    loads = [_load()]
    log(f"posthoc-csra perf: {info['CPU']}; {info['Device']}; sections {','.join(args.sections)}"
        + (" (dry run)" if args.dry_run else ""))
    results: dict = {}
    for key, run in (("a", lambda: section_a(args, runtime, log)), ("b", lambda: section_b(args, runtime, log)),
                     ("c", lambda: section_c(args, log)), ("d", lambda: section_d(args, runtime, log))):
        if key in args.sections:
            results[key] = run()
            loads.append(_load())
    elapsed = time.perf_counter() - t0

    notes = [threads_note] if threads_note else []
    cores = os.cpu_count() or 1
    known = [v for v in loads if v is not None]
    if known:
        shared = max(known) > cores + 0.5
        notes.append(f"1-minute load average at the start and after each section: "
                     f"{', '.join(f'{v:.1f}' for v in known)} on {cores} cores"
                     + (" — **the machine was shared with other processes during this run**; wall-clock "
                        "times are noisy, ratios are medians of paired, interleaved repetitions."
                        if shared else "."))
    if "a" in results:
        notes.append("Section (a) uses random weights (`pretrained=False`): timing only needs the architecture.")
    print_tables(results, log)
    report = render(args, info, results, notes, started, elapsed)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(merge_report(out.read_text() if out.is_file() else None, report, device.type == "cuda"))
    log(f"\nwrote {out} ({elapsed:.0f} s)")
    return results


if __name__ == "__main__":
    main()
