"""Performance benchmark of post-hoc CSRA, in one process, on the same batches.

Run: ``python benchmarks/perf.py`` (CPU; sized for about 10 minutes on 2 idle cores), or e.g.
``python benchmarks/perf.py --device cuda --amp bf16 --channels-last [--compile]``.

Sections (``--sections a,b,c``):

(a) ``CSRAScorer`` vs the plain ``model(x)`` forward, per model, on one fixed random
    (B, 3, S, S) batch with RANDOM weights (timing only needs the architecture).
    Repetitions are interleaved (plain, scorer, scorer, then the reverse order) and the
    overhead is the median of the per-repetition ratios scorer / plain. Beside it: the
    theoretical floor ``1 + L*d*C / MACs(model)`` (the extra work is one (L x d)(d x C)
    product per image; the model's MACs come from ``torch.utils.flop_counter``), the
    FLOP-counted ratio of the two forwards, and an estimate from the parts (the extra
    work timed alone on fixed features, divided by the plain forward time).
(b) Images/s end to end on the real JPEGs: ``score_folder`` (the ``posthoc-csra score``
    library call, decode and DataLoader workers included, writing a CSV) vs an equivalent
    plain timm loop (same model loading, transform, ImageFiles + collate_images DataLoader,
    batch and workers; ``model(images)`` only), interleaved, medians. Real
    tf_efficientnet_lite0 weights from the shared weights manifest.
(c) The lambda-sweep speed of ``average_precision_sweep`` vs scikit-learn
    (``benchmarks/metric_speed.py``).

Every number in the report is measured by this script; nothing is typed in by hand.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import os
import platform
import resource
import shlex
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

from posthoc_csra import heads as _heads  # noqa: E402
from posthoc_csra.paths import shared_dir  # noqa: E402
from posthoc_csra.runtime import Runtime  # noqa: E402
from posthoc_csra.scorer import CSRAScorer, LocationOutput  # noqa: E402

DEFAULT_MODELS = ("resnet50", "vit_small_patch16_224", "tf_efficientnet_lite0")
#: Overhead goals of section (a): scorer time / plain forward time.
GOALS = {"resnet50": 1.02, "vit_small_patch16_224": 1.03, "tf_efficientnet_lite0": 1.05}
END_TO_END_GOAL = 0.95
PIPELINE_MODEL = "tf_efficientnet_lite0"
SCORER_CONFIGS = (("heads=1, logit", 1, "logit"), ("heads=8, prob", 8, "prob"))
LAM = 0.1
#: Shares of ``--budget`` for the timed repetitions of sections (a) and (b); (c) has fixed sizes.
A_SHARE, B_SHARE = 0.5, 0.35


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


def _python_calls(fn: Callable[[], object]) -> int:
    """Python function calls made by one call of fn (sys.setprofile 'call' events)."""
    count = 0

    def profiler(frame, event, arg):
        nonlocal count
        if event == "call":
            count += 1

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
    """Section (a) for one model: plain forward vs the scorer, interleaved, same batch."""
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
        scorer_flops = _flops(lambda: first(x1))
        calls = {b: _python_calls(lambda b=b: first(x1.expand(b, -1, -1, -1)))
                 for b in (1, min(4, args.batch_size))}
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

        # The extra work alone, on fixed features: per-location logits + grid + the rule.
        features = model.forward_features(x)
        logits = model.forward_head(features)

        def extra(scorer):
            loc = _heads.per_location_logits(model, scorer.layout, features)
            grid = scorer.layout.grid(features, model, tuple(x.shape[-2:]))
            return scorer.score_output(LocationOutput(logits, loc, grid))

        parts = _interleaved({label: (lambda s=s: extra(s)) for label, s in scorers.items()},
                             max(args.reps, 15), device)

    plain_wall = statistics.median(times["plain"]["wall"])
    goal, main_label = GOALS.get(name), SCORER_CONFIGS[0][0]
    rows = []
    for label in scorers:
        ratio, (q1, q3) = _paired_ratio(times[label]["wall"], times["plain"]["wall"])
        cpu_ratio, _ = _paired_ratio(times[label]["cpu"], times["plain"]["cpu"])
        extra_s = statistics.median(parts[label]["wall"])
        rows.append({
            "config": label,
            "plain_s": plain_wall,
            "scorer_s": statistics.median(times[label]["wall"]),
            "ratio": ratio, "q1": q1, "q3": q3,
            "cpu_ratio": cpu_ratio,
            "min_ratio": min(times[label]["wall"]) / min(times["plain"]["wall"]),
            "extra_s": extra_s,
            "parts_ratio": 1 + extra_s / plain_wall,
            "verdict": _verdict(ratio, goal, q1, q3, "max") if label == main_label else "",
            "parts_verdict": (("PASS" if 1 + extra_s / plain_wall <= goal else "FAIL")
                              if goal is not None and label == main_label else ""),
            "peak_plain_mb": peaks["plain"].peak_mb,
            "peak_scorer_mb": peaks[label].peak_mb,
            "growth_plain_mb": peaks["plain"].growth_mb,
            "growth_scorer_mb": peaks[label].growth_mb,
        })
    result = {
        "model": name, "L": int(num_locations), "d": int(dim), "C": int(num_classes),
        "plain_gmacs": plain_macs / 1e9,
        "floor": 1 + extra_macs / plain_macs,
        "flop_ratio": scorer_flops / plain_flops,
        "feature_format": first.feature_format, "exact": first.exact,
        "python_calls": calls,
        "rows": rows, "goal": goal, "reps": len(times["plain"]["wall"]),
        "maxrss_mb": _maxrss_mb(),
    }
    return result


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
        main = r["rows"][0]
        log(f"(a) {name} ({r['reps']} reps): plain {main['plain_s']:.3f}s  scorer {main['scorer_s']:.3f}s  "
            f"ratio {main['ratio']:.3f} {main['verdict']}; parts {main['parts_ratio']:.3f} {main['parts_verdict']} "
            f"(floor {r['floor']:.3f}, goal {r['goal']})  [{r['seconds']:.0f}s]")
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


def _forward_loop(image_dir: Path, args, runtime: Runtime, rule: bool) -> int:
    """What ``score_folder`` does minus the table and the file: load, transform, DataLoader, then per batch
    ``model(images)`` (``rule=False``, the plain timm loop) or ``CSRAScorer(images)``; returns images scored."""
    from posthoc_csra.images import ImageFiles, collate_images, find_images
    from posthoc_csra.models import load_model
    from posthoc_csra.folder import data_transform

    paths = find_images(image_dir)
    model = load_model(PIPELINE_MODEL, **({"img_size": args.img_size} if args.img_size else {}))  # as score_folder
    transform, config = data_transform(model, args.img_size)
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

    from posthoc_csra.folder import score_folder
    from posthoc_csra.options import LoadOptions, RuleOptions

    logging.getLogger("posthoc_csra").setLevel(logging.WARNING)
    device = runtime.torch_device
    with tempfile.TemporaryDirectory(prefix="posthoc-csra-perf-") as tmp:
        tmp = Path(tmp)
        image_dir = _image_folder(tmp, args.b_repeat)
        output = tmp / "scores.csv"

        def pipeline(image_dir=image_dir):
            result = score_folder(image_dir, PIPELINE_MODEL, RuleOptions(lam=LAM, heads=1, space="logit"),
                                  loading=LoadOptions(batch_size=args.batch_size, workers=args.workers, progress=False),
                                  runtime=runtime, img_size=args.img_size, output=output)
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


# ----------------------------------------------------------------------------- report

def _fmt_mb(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _bold(text: str) -> str:
    return f"**{text}**" if text else ""


def render(args, info, results, notes, started, elapsed) -> str:
    device = torch.device(args.device)
    mem_what = "peak CUDA memory allocated" if device.type == "cuda" else "peak process RSS (sampled every 5 ms)"
    lines = ["# posthoc-csra performance benchmark", "",
             "Generated by `benchmarks/perf.py`; every number below is measured by that script.", "",
             f"- Command: `{' '.join(shlex.quote(a) for a in ['python', *sys.argv])}`",
             f"- Date: {started:%Y-%m-%d %H:%M:%S %Z}".rstrip(),
             f"- Run time: {elapsed:.0f} s"]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += [f"- Settings: device {args.device}, amp {args.amp}, channels_last {args.channels_last}, "
              f"compile {args.compile}, batch {args.batch_size}, {args.img_size} px, up to {args.reps} reps "
              f"in (a) and {args.b_reps} in (b) (at least {args.min_reps} / {args.min_reps_b}; time budget "
              f"{f'{args.budget:.0f} s' if args.budget else 'off'}), warm-up {args.warmup}"]
    if notes:
        lines += ["", "**Notes**", ""] + [f"- {note}" for note in notes]

    if "a" in results:
        lines += ["", "## (a) Scorer overhead vs the plain forward", "",
                  f"Random weights (timing does not depend on them), one fixed random batch "
                  f"({args.batch_size}, 3, {args.img_size}, {args.img_size}), `torch.inference_mode`, "
                  f"{args.warmup} warm-up call(s) each, then interleaved repetitions "
                  f"(plain, scorers, then the reverse order; count in the reps column). λ = {LAM}.", "",
                  "- **ratio**: median over repetitions of scorer time / plain time of the same "
                  "repetition (wall clock), [quartiles]; **CPU ratio**: the same with process CPU time; "
                  "**min ratio**: fastest scorer call / fastest plain call.",
                  "- **parts**: 1 + (the extra work alone — per-location head, grid, rule — timed on fixed "
                  "features, median of at least 15 calls) / median plain time. Scorer − plain is exactly that "
                  "extra work, so this is the same ratio measured without subtracting two large noisy times.",
                  "- **floor**: 1 + L·d·C / MACs(model): the one extra (L × d)·(d × C) product per image; "
                  "model MACs from `torch.utils.flop_counter.FlopCounterMode` on one forward. "
                  "**FLOP ratio**: counted FLOPs of the scorer forward / the plain forward. (A time ratio can "
                  "be below the MAC floor when the model's own layers run less efficiently than one large GEMM.)",
                  "- **direct** / **by parts**: the goal checked on the ratio / on parts; \"(within noise)\" "
                  "when the goal lies inside the ratio's quartiles.",
                  f"- **memory**: {mem_what} during the timed calls, MiB, and in brackets its largest "
                  "rise above the memory in use when a call started (the call's working memory).", "",
                  "| model | L | d | C | GMACs/img | reps | config | plain s | scorer s | ratio [q1–q3] "
                  "| CPU ratio | min ratio | parts | floor | FLOP ratio | goal | direct | by parts "
                  "| memory plain / scorer |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
        for r in results["a"]:
            for i, row in enumerate(r["rows"]):
                first = i == 0
                head = (f"| {r['model']} | {r['L']} | {r['d']} | {r['C']} | {r['plain_gmacs']:.2f} | {r['reps']} "
                        if first else "| | | | | | ")
                goal = f"≤ {r['goal']:.2f}" if (first and r["goal"]) else ""
                lines.append(
                    f"{head}| {row['config']} | {row['plain_s']:.3f} | {row['scorer_s']:.3f} "
                    f"| {row['ratio']:.3f} [{row['q1']:.3f}–{row['q3']:.3f}] | {row['cpu_ratio']:.3f} "
                    f"| {row['min_ratio']:.3f} | {row['parts_ratio']:.3f} | {r['floor']:.3f} "
                    f"| {r['flop_ratio']:.3f} | {goal} | {_bold(row['verdict'])} | {_bold(row['parts_verdict'])} "
                    f"| {_fmt_mb(row['peak_plain_mb'])} (+{_fmt_mb(row['growth_plain_mb'])}) / "
                    f"{_fmt_mb(row['peak_scorer_mb'])} (+{_fmt_mb(row['growth_scorer_mb'])}) |")
        lines += ["", "Goals are on the heads=1 logit row (the default rule); heads=8 prob is shown for scale.", "",
                  "Hot path check: Python function calls made by one scorer forward "
                  "(`sys.setprofile`) at two batch sizes; equal counts mean no per-image Python loop.", "",
                  "| model | features | exact mean | Python calls (batch sizes) | per-image loop |",
                  "|---|---|---|---|---|"]
        for r in results["a"]:
            calls = r["python_calls"]
            counts = ", ".join(f"{n} (B={b})" for b, n in calls.items())
            lines.append(f"| {r['model']} | {r['feature_format']} | {r['exact']} | {counts} "
                         f"| {'none' if len(set(calls.values())) == 1 else '**yes**'} |")

    if "b" in results:
        b = results["b"]
        repeat = f" × {args.b_repeat}" if args.b_repeat > 1 else ""
        lines += ["", "## (b) End to end: `score_folder` vs a plain timm loop", "",
                  f"{b['n_images']} real JPEGs (`imagenet-val-real`{repeat}), {PIPELINE_MODEL} with its real "
                  f"weights (shared weights manifest), timm's eval transform, `ImageFiles` + `collate_images` "
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
                  f"| by CPU | {'peak CUDA MiB (+ rise)' if device.type == 'cuda' else 'peak RSS MiB, main process (+ rise)'} |",
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

    lines += ["", "## Peak memory by section", "",
              "ru_maxrss of this process after each section (cumulative peak, MiB)"
              + ("; CUDA peaks are in the tables above." if device.type == "cuda" else "."), "",
              "| after section | peak RSS MiB |", "|---|---:|"]
    for key in ("a", "b", "c"):
        if key in results:
            value = results[key][-1]["maxrss_mb"] if key == "a" else results[key]["maxrss_mb"]
            lines.append(f"| {key} | {_fmt_mb(value)} |")
    return "\n".join(lines) + "\n"


def print_tables(results, log) -> None:
    if "a" in results:
        log("")
        log(f"{'model':<24}{'config':<16}{'plain s':>9}{'scorer s':>10}{'ratio':>8}{'parts':>8}"
            f"{'floor':>8}{'goal':>7}  direct / by parts")
        for r in results["a"]:
            for i, row in enumerate(r["rows"]):
                goal = f"{r['goal']:.2f}" if (i == 0 and r["goal"]) else ""
                verdict = f"{row['verdict']} / {row['parts_verdict']}" if goal else ""
                log(f"{r['model'] if i == 0 else '':<24}{row['config']:<16}{row['plain_s']:>9.3f}"
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


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="autocast dtype")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone (forward_features)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions in (a); 9 on CPU, 30 on CUDA when not given")
    p.add_argument("--min-reps", type=int, default=5, help="repetitions in (a) done even past the time budget")
    p.add_argument("--budget", type=float, default=900.0,
                   help="soft time budget in seconds: (a) and (b) stop repeating (after the minimum) once "
                        f"their shares ({A_SHARE * 100:.0f}%%, {B_SHARE * 100:.0f}%%) are spent; 0 = off")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per path in (a); 1, or 3 with --compile or CUDA, when not given")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated timm names for (a)")
    p.add_argument("--sections", default="a,b,c", help="any of a,b,c")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers in (b)")
    p.add_argument("--b-reps", type=int, default=None, help="timed repetitions in (b); 9 when not given")
    p.add_argument("--min-reps-b", type=int, default=9, help="repetitions in (b) done even past the budget")
    p.add_argument("--b-repeat", type=int, default=1, help="use the 530 JPEGs this many times in (b)")
    p.add_argument("--b-scorer-loop", action="store_true",
                   help="(b) also times the plain loop with CSRAScorer in place of the model")
    p.add_argument("--c-images", type=int, default=5000)
    p.add_argument("--c-classes", type=int, default=1000)
    p.add_argument("--c-lams", type=int, default=101)
    p.add_argument("--c-sklearn-lams", type=int, default=3, help="λ values scikit-learn is timed on")
    p.add_argument("--threads", default="auto",
                   help="torch threads: a number, or auto = torch's default, but 1 when the 1-minute load "
                        "average is at least the core count (on a busy machine every multi-threaded OpenMP "
                        "region waits for descheduled threads, which swamps the timings)")
    p.add_argument("--output", default=None,
                   help="Markdown report (default benchmarks/results/perf.md; perf_gpu.md for cuda)")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if bad := sorted(set(args.sections) - {"a", "b", "c"}):
        p.error(f"--sections: unknown {bad}; use a,b,c")
    cuda = args.device.startswith("cuda")
    if args.reps is None:
        args.reps = 30 if cuda else 9
    if args.warmup is None:
        args.warmup = 3 if (cuda or args.compile) else 1
    if args.b_reps is None:  # end-to-end runs here vary by up to ±10 %: 9 pairs for a stable median
        args.b_reps = 9
    if args.output is None:
        args.output = str(HERE / "results" / ("perf_gpu.md" if cuda else "perf.md"))
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
    log(f"posthoc-csra perf: {info['CPU']}; {info['Device']}; sections {','.join(args.sections)}")
    results: dict = {}
    if "a" in args.sections:
        results["a"] = section_a(args, runtime, log)
        loads.append(_load())
    if "b" in args.sections:
        results["b"] = section_b(args, runtime, log)
        loads.append(_load())
    if "c" in args.sections:
        results["c"] = section_c(args, log)
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
    out.write_text(report)
    log(f"\nwrote {out} ({elapsed:.0f} s)")
    return results


if __name__ == "__main__":
    main()
