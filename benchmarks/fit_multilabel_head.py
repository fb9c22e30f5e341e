"""Benchmark fixture: the paper's own setting, a head trained multi-label with average pooling.

    python benchmarks/fit_multilabel_head.py [--shared DIR] [--out DIR] [--models m1,m2] [--img-size 448] [--seed 0]

Zhu & Wu apply CSRA at test time to models trained with a sigmoid loss on the dataset's own classes. This
script makes such models from the shared ImageNet backbones without touching the scorer: for each model it
fits a linear multi-label head (per-class logistic loss, one output per VOC class, VOC "difficult" entries
left out of the loss, L2 strength chosen by k-fold cross-validation on the training part) on the frozen,
globally average-pooled features (``forward_head(forward_features(x), pre_logits=True)``) of a **training
part** of the shared VOC2007 trainval images (``part:1/2:SEED:voc2007:...``), preprocessed exactly as
``bench`` evaluates VOC (the library's own full-frame transform, ``prepare.prepare_model``). It writes a timm
checkpoint (the backbone's weights, classifier replaced by the fitted (20, D) weight and (20,) bias) and a
weights ``manifest.json`` whose entries have ``num_classes`` 20 and ``label_space`` "voc2007", so ``bench``
evaluates them on the disjoint **evaluation part** (``part:2/2:SEED:...``, printed at the end) through the
ordinary path with no class map: all 20 VOC classes, ``person`` included.

This is a benchmark fixture, not a training feature of the toolkit (which never trains or changes weights).

* Output: a folder under the per-user cache (``<cache>/fixtures/multilabel-voc2007``), never the repository
  and never ``../shared``: the checkpoints carry the backbones' weights; never commit them.
* Models: default ``tf_efficientnet_lite0,mobilenetv2_100`` (the cheapest pool→linear models of the shared
  manifest). At 448 px the two cost about 15 CPU-minutes (about 10 minutes on 2 idle cores): the backbone
  pass over the 1,000 training images (about 0.4 CPU-s per image and model) and the cross-validation
  (35 small full-batch fits per model, about one CPU-minute). ``--models`` takes any shared manifest entry
  whose head is global average pooling then one linear layer (measured: the mean of its per-location logits
  is its output); any other head (e.g. ``tf_mobilenetv3_small_100``: conv_head + hardswish after the pool)
  is refused with the reason.
* Manifest entries are keyed by the timm model name (``load_model`` / ``bench`` resolve an entry by the
  model's name or architecture, and timm refuses unknown ``arch.tag`` names), so this manifest is used on its
  own: ``bench --checkpoint <out>/manifest.json``. Each entry also records ``fixture_name`` (e.g.
  ``tf_efficientnet_lite0-voc2007-multilabel``), its source entry, ``train_spec`` / ``eval_spec`` and the fit
  settings (the chosen L2 strength and every cross-validated mAP).
* Re-runs are cheap: an entry whose checkpoint exists with its recorded sha256 and whose fit key (source
  weights sha256, settings, training images' fingerprint, timm/torch versions) is unchanged is reused.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

DATASET = "voc2007"
DEFAULT_MODELS = ("tf_efficientnet_lite0", "mobilenetv2_100")
#: L2 strengths α of the per-class objective mean BCE + α/2·‖w‖² on standardised features (sklearn C=1/(α n)).
#: On the shared VOC images (Lite0 and MobileNetV2, 5-fold CV on 500 images) the best α was 0.3-1; weaker
#: regularisation overfits the 1280-d features.
L2_GRID = (1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0)
FOLDS = 5
FIT_VERSION = 1  # bump when the fit or the written checkpoint changes: entries with another fit key are refitted
SUFFIX = "voc2007-multilabel"
PARTS = 2


def default_out_dir() -> Path:
    from posthoc_csra.paths import default_cache_dir

    return default_cache_dir() / "fixtures" / "multilabel-voc2007"


def voc_spec(shared: Path) -> str:
    return f"voc2007:{Path(shared).expanduser().resolve() / 'data' / 'voc2007'}@trainval"


def part_specs(shared: Path, seed: int = 0) -> Tuple[str, str]:
    """(training spec, evaluation spec): parts 1/2 and 2/2 of one seeded permutation of the VOC images."""
    inner = voc_spec(shared)
    return f"part:1/{PARTS}:{seed}:{inner}", f"part:2/{PARTS}:{seed}:{inner}"


def _sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------- the model and its features
def check_head(net, name: str) -> int:
    """The pooled feature width D when ``net``'s head is global average pooling → one linear layer (measured
    on a probe, as the scorer does); else an InputError saying why the fit would not be the paper's setting."""
    import torch
    from torch import nn

    from posthoc_csra import CSRAScorer
    from posthoc_csra.errors import InputError
    from posthoc_csra.heads import head_kind

    why = None
    scorer = CSRAScorer(net, lam=0.0, method="model", input_size=(3, 64, 64))
    classifier = net.get_classifier() if hasattr(net, "get_classifier") else None
    if not isinstance(classifier, nn.Linear):
        why = f"its classifier is {type(classifier).__name__}, not one linear layer"
    elif not scorer.exact:
        why = ("the mean of its per-location logits is not its output (a norm, MLP, activation or token "
               "after the pool)")
    else:
        with torch.inference_mode():
            pooled = net.forward_head(net.forward_features(torch.zeros(1, 3, 64, 64)), pre_logits=True)
        if pooled.ndim != 2 or pooled.shape[1] != classifier.in_features:
            why = f"its pre-logits features are {tuple(pooled.shape)}, not the classifier's input"
    if why:
        raise InputError(f"{name}: not a pool→linear head ({head_kind(net)}): {why}, so a linear head fitted on "
                         f"its pooled features is not the paper's setting; use a model whose head is global "
                         f"average pooling then one linear layer (e.g. {', '.join(DEFAULT_MODELS)})")
    return int(classifier.in_features)


class _Images:
    """Items ``transform(image)`` of ``dataset[indices[i]]`` (a torch Dataset, picklable for workers)."""

    def __init__(self, dataset, indices, transform):
        self.dataset, self.indices, self.transform = dataset, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.transform(self.dataset[int(self.indices[i])][0])


def pooled_features(net, transform, dataset, indices, batch_size: int = 32, workers: int = 0,
                    progress: bool = True, desc: str = "features"):
    """(N, D) float32: the frozen backbone's globally pooled pre-logit features of ``dataset[indices]``."""
    import torch
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(_Images(dataset, indices, transform), batch_size=batch_size,
                                         shuffle=False, num_workers=workers)
    out = []
    with torch.inference_mode(), tqdm(total=len(indices), unit="img", desc=desc, disable=not progress,
                                      file=sys.stderr) as bar:
        for x in loader:
            out.append(net.forward_head(net.forward_features(x), pre_logits=True).float())
            bar.update(len(x))
    return torch.cat(out).numpy()


# ---------------------------------------------------------------- the fit
def multilabel_loss(logits, targets, valid):
    """Σ_c mean over the valid images of class c of the logistic loss (torch tensors, (N, C))."""
    import torch

    per_entry = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    counts = valid.sum(0).clamp_min(1)
    return (per_entry * valid).sum(0).div(counts).sum()


@contextlib.contextmanager
def _one_thread():
    """torch on one intra-op thread: the fit is many tiny ops (parallel regions only cost, badly so on a busy
    machine) and one thread makes it bit-reproducible whatever the machine's thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_linear_head(features: np.ndarray, targets: np.ndarray, ignore: np.ndarray, l2: float,
                    max_iter: int = 1000) -> Tuple[np.ndarray, np.ndarray, dict]:
    """(W (C, D), b (C,), info): per class c, minimise mean_i BCE(w_c·x_i + b_c, y_ic) + α/2·‖w_c‖² over the
    non-ignored images, on standardised features (full-batch L-BFGS in float64 on one thread, zero start:
    deterministic); W and b are returned for the raw features. ``info``: the objective, L-BFGS iterations,
    the training loss (the objective without the L2 term) and the final gradient's largest entry."""
    with _one_thread():
        return _fit_linear_head(features, targets, ignore, l2, max_iter)


def _fit_linear_head(features, targets, ignore, l2: float, max_iter: int):
    import torch

    x = torch.from_numpy(np.asarray(features, dtype=np.float64))
    y = torch.from_numpy(np.asarray(targets, dtype=np.float64))
    valid = torch.from_numpy(~np.asarray(ignore, dtype=bool)).double()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant features: left unscaled (weight → 0)
    z = (x - mean) / std
    w = torch.zeros(y.shape[1], x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        loss = multilabel_loss(z @ w.T + b, y, valid) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(objective)
        final = objective()
    gradient = max(float(w.grad.abs().max()), float(b.grad.abs().max()))
    with torch.no_grad():
        weight = w / std
        bias = b - weight @ mean
        train_loss = float(multilabel_loss(x @ weight.T + bias, y, valid))
    iterations = int(opt.state[opt._params[0]].get("n_iter", 0))
    return (weight.numpy().astype(np.float32), bias.numpy().astype(np.float32),
            dict(objective=float(final.detach()), train_loss=train_loss, lbfgs_iterations=iterations,
                 max_gradient=gradient))


def fold_indices(n: int, folds: int, seed: int):
    """``folds`` disjoint index arrays covering range(n), from a seeded permutation."""
    return [np.sort(f) for f in np.array_split(np.random.default_rng(seed).permutation(n), folds)]


def cross_validate_l2(features, targets, ignore, grid: Sequence[float] = L2_GRID, folds: int = FOLDS,
                      seed: int = 0) -> Tuple[float, Dict[str, float]]:
    """(α, {α: mean held-out mAP}): the grid's α with the best mAP over ``folds`` folds (ties → the larger α)."""
    from posthoc_csra.metrics import average_precision

    parts = fold_indices(len(features), folds, seed)
    scores: Dict[str, float] = {}
    for alpha in grid:
        maps = []
        for held in parts:
            train = np.setdiff1d(np.arange(len(features)), held)
            w, b, _ = fit_linear_head(features[train], targets[train], ignore[train], alpha)
            ap = average_precision(features[held] @ w.T + b, targets[held], ignore[held])
            if np.isfinite(ap).any():
                maps.append(float(np.nanmean(ap)))
        scores[repr(float(alpha))] = float(np.mean(maps)) * 100 if maps else math.nan
    best = max(grid, key=lambda a: (np.nan_to_num(scores[repr(float(a))], nan=-1.0), a))
    return float(best), scores


# ---------------------------------------------------------------- one model
def _source_entries(shared: Path):
    from posthoc_csra.weights import read_manifest

    path = Path(shared) / "weights" / "manifest.json"
    return path, read_manifest(path)


def _reusable(manifest: dict, key: str, out_dir: Path, fit_key: str) -> bool:
    from posthoc_csra.hashing import file_sha256

    entry = manifest.get(key)
    if not entry or entry.get("fit", {}).get("fit_key") != fit_key:
        return False
    path = out_dir / entry["file"]
    return path.is_file() and file_sha256(path) == entry.get("sha256")


def _write_checkpoint(net, weight: np.ndarray, bias: np.ndarray, path: Path) -> str:
    import torch
    from safetensors.torch import save_file

    from posthoc_csra.cache import atomic_path
    from posthoc_csra.hashing import file_sha256

    net.reset_classifier(weight.shape[0])
    classifier = net.get_classifier()
    with torch.no_grad():
        classifier.weight.copy_(torch.from_numpy(weight))
        classifier.bias.copy_(torch.from_numpy(bias))
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    return file_sha256(path)


def fit_heads(shared: Path, out_dir: Optional[Path] = None, models: Sequence[str] = DEFAULT_MODELS,
              img_size: int = 448, seed: int = 0, *, l2: Optional[float] = None,
              grid: Sequence[float] = L2_GRID, folds: int = FOLDS, max_images: Optional[int] = None,
              batch_size: int = 32, workers: int = 0, progress: bool = True, force: bool = False) -> Path:
    """Fit a VOC2007 multi-label head for each model; write ``<out_dir>/<model>-voc2007-multilabel.safetensors``
    and ``<out_dir>/manifest.json`` (entries of other models already there are kept). Returns the manifest path.

    shared: the real assets folder (``weights/manifest.json``, ``data/voc2007``). models: shared manifest
    entries with a pool→linear head (others are refused before any work). l2: a fixed L2 strength instead of
    choosing it from ``grid`` by ``folds``-fold cross-validation on the training part. max_images: fit on the
    first N training-part images only (smoke tests). force: refit even when a matching entry exists.
    """
    import timm
    import torch

    from posthoc_csra.datasets import VOC_CLASSES, parse_dataset
    from posthoc_csra.errors import InputError
    from posthoc_csra.options import ModelSource
    from posthoc_csra.prepare import prepare_model
    from posthoc_csra.tables import write_text
    from posthoc_csra.hashing import file_sha256
    from posthoc_csra.weights import read_manifest

    shared = Path(shared).expanduser().resolve()
    out_dir = Path(out_dir if out_dir is not None else default_out_dir()).expanduser().resolve()
    if out_dir == shared or shared in out_dir.parents:
        raise InputError(f"--out {out_dir} is inside the shared assets {shared}; write the fixture elsewhere "
                         f"(default {default_out_dir()})")
    source_path, sources = _source_entries(shared)
    models = list(dict.fromkeys(models))
    unknown = [m for m in models if m not in sources]
    if unknown:
        raise InputError(f"--models {', '.join(unknown)}: not in {source_path}; it lists {', '.join(sorted(sources))}")
    if l2 is None and (folds < 2 or not grid):
        raise InputError("cross-validation needs folds >= 2 and a non-empty grid (or pass a fixed l2)")
    train_spec, eval_spec = part_specs(shared, seed)
    train = parse_dataset(train_spec)
    if list(train.classes) != VOC_CLASSES or train.label_space != DATASET or not train.full_frame:
        raise InputError(f"{train_spec}: expected the 20 VOC2007 classes, full frame")
    indices = np.arange(len(train) if max_images is None else min(int(max_images), len(train)))
    targets, ignore = train.targets()[indices], train.ignore_mask()[indices]

    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    fit_keys, source_sha = {}, {}
    for name in models:
        source = sources[name]
        source_sha[name] = source.sha256 or file_sha256(source.file)
        fit_keys[name] = _sha256_json(dict(
            fit_version=FIT_VERSION, source_sha256=source_sha[name],
            timm_model=source.timm_model, model_kwargs=source.model_kwargs, overlay=source.pretrained_cfg_overlay,
            img_size=img_size, seed=seed, train_spec=train_spec, train=train.fingerprint(), max_images=max_images,
            l2=l2, grid=[float(a) for a in grid], folds=folds, timm=timm.__version__, torch=torch.__version__))
    todo = [name for name in models if force or not _reusable(manifest, name, out_dir, fit_keys[name])]
    for name in models:
        if name not in todo:
            print(f"{name}: reusing {out_dir / manifest[name]['file']} (same source weights and settings)")
    prepared = {}
    for name in todo:  # every head checked before any backbone pass
        prepared[name] = prepare_model(name, img_size, ModelSource(checkpoint=source_path))
        check_head(prepared[name].net, name)

    for name, model in prepared.items():
        source, fit_key = sources[name], fit_keys[name]
        started = time.perf_counter()
        transform = model.preprocessing[True][0]  # full frame at img_size: how bench evaluates VOC
        x = pooled_features(model.net, transform, train, indices, batch_size, workers, progress, desc=name)
        if l2 is None:
            alpha, cv = cross_validate_l2(x, targets, ignore, grid, folds, seed)
            if len(grid) > 1 and alpha in (min(grid), max(grid)):
                print(f"{name}: warning: the chosen L2 {alpha:g} is at the edge of the grid {list(grid)}",
                      file=sys.stderr)
        else:
            alpha, cv = float(l2), {}
        weight, bias, info = fit_linear_head(x, targets, ignore, alpha)
        if info["max_gradient"] > 1e-4:
            print(f"{name}: warning: L-BFGS stopped with gradient {info['max_gradient']:.1e} after "
                  f"{info['lbfgs_iterations']} iterations", file=sys.stderr)
        fixture = f"{name}-{SUFFIX}"
        file = f"{fixture}.safetensors"
        sha = _write_checkpoint(model.net, weight, bias, out_dir / file)
        manifest[name] = {
            "file": file,
            "timm_model": source.timm_model,
            "model_kwargs": source.model_kwargs,
            "pretrained_cfg_overlay": {**source.pretrained_cfg_overlay, "label_names": list(VOC_CLASSES)},
            "num_classes": len(VOC_CLASSES),
            "label_space": DATASET,
            "sha256": sha,
            "source": (f"fitted by benchmarks/fit_multilabel_head.py: a linear multi-label head (per-class "
                       f"logistic loss, L2 {alpha:g}) on the frozen, globally average-pooled {img_size}px "
                       f"full-frame features of part 1/{PARTS} (seed {seed}, {len(indices)} images) of the "
                       f"shared VOC2007 trainval images, backbone from shared weights entry {name} "
                       f"({source.source})"),
            "license": source.extra.get("license", "unknown"),
            "fixture_name": fixture,
            "source_entry": {"manifest": str(source_path), "name": name, "sha256": source_sha[name]},
            "train_spec": train_spec,
            "eval_spec": eval_spec,
            "fit": {"loss": "per-class logistic (sigmoid BCE), VOC difficult entries masked out",
                    "features": "forward_head(forward_features(x), pre_logits=True), frozen backbone",
                    "preprocessing": "full frame (whole image resized to img_size, no crop)",
                    "img_size": img_size, "seed": seed, "n_train_images": int(len(indices)),
                    "max_images": max_images, "l2": alpha, "l2_chosen_by": "fixed" if l2 is not None else
                    f"{folds}-fold cross-validated mAP on the training part", "cv_mAP": cv,
                    "train_loss": info["train_loss"], "lbfgs_iterations": info["lbfgs_iterations"],
                    "max_gradient": info["max_gradient"],
                    "feature_dim": int(x.shape[1]), "seconds": round(time.perf_counter() - started, 1),
                    "fit_key": fit_key},
        }
        write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
        print(f"{name}: wrote {out_dir / file} (L2 {alpha:g}, training loss {info['train_loss']:.4f})")
    if not manifest_path.is_file():
        write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    read_manifest(manifest_path)  # readable by the library
    return manifest_path


def main(argv: Optional[Sequence[str]] = None) -> int:
    from posthoc_csra.errors import PosthocCsraError
    from posthoc_csra.paths import shared_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=None, help="the shared assets folder (default ../shared)")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {default_out_dir()})")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="shared manifest entries with a pool→linear head (default %(default)s)")
    parser.add_argument("--img-size", type=int, default=448, help="input size in pixels (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="which random halving of the images (default 0)")
    parser.add_argument("--l2", type=float, default=None, help="a fixed L2 strength instead of cross-validation")
    parser.add_argument("--folds", type=int, default=FOLDS, help="cross-validation folds (default %(default)s)")
    parser.add_argument("--max-images", type=int, default=None, help="fit on the first N training images only")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="refit even when a matching checkpoint exists")
    args = parser.parse_args(argv)
    shared = args.shared or shared_dir()
    if shared is None:
        parser.error("no shared assets folder: pass --shared DIR or set POSTHOC_CSRA_SHARED")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        manifest = fit_heads(shared, args.out, models, args.img_size, args.seed, l2=args.l2, folds=args.folds,
                             max_images=args.max_images, batch_size=args.batch_size, workers=args.workers,
                             force=args.force)
    except PosthocCsraError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _, eval_spec = part_specs(Path(shared), args.seed)
    print(f"manifest: {manifest}\nevaluation part: {eval_spec}\nevaluate with:\n  posthoc-csra bench "
          f"--checkpoint {manifest} --models {','.join(models)} --dataset '{eval_spec}' --img-size {args.img_size} "
          f"--select-on val")
    return 0


if __name__ == "__main__":
    sys.exit(main())
