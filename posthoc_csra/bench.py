"""``posthoc-csra bench``: models × datasets × λ × head sets × spaces → one tidy table of mAP.

Each (model, weights, dataset, preprocessing) gets one backbone pass, stored by ``cache.py``;
every λ / head set / space is then evaluated from the cached arrays alone.

Table columns (one row per model, dataset, img_size, split, space, heads, λ):

* ``mAP``, ``delta`` (mAP − mAP at λ=0, same split and space), ``CF1``, ``OF1``: in percent.
  mAP and F1 use the classes with at least one (non-ignored) positive in the split.
* CF1/OF1 threshold rule (``threshold``, default 0.5): an entry is predicted positive when
  ``sigmoid(score) >= threshold`` in logit space (i.e. ``score >= log(t / (1 - t))``; CSRA-augmented
  logits are not calibrated, so this is a convention, not a calibrated decision) and when
  ``score >= threshold`` in prob space.
* ``exact``: the per-location path is exact for this head (mean of per-location logits = model logits).
* ``seconds``: wall time to compute (or load) the statistics of this model × dataset × size;
  ``cached``: True when no backbone pass was needed.
* ``split``: "all", or with ``select_on="val"`` "val"/"test" halves from ``split_indices``;
  ``selected`` marks, per (model, dataset, img_size, space, heads), the λ with the best val mAP
  (ties → the smaller λ). Report the test row with ``selected`` — λ never tuned on its own test data.
* Class maps: an ImageNet-1k model (1000 classes) on a voc2007/coco2014 dataset is scored through
  the shipped WordNet class map. Prob space pools member classes with ``pool`` (max or sum, in the
  ``pool`` column), after the CSRA rule; logit space always pools with max (a sum of logits has no
  meaning). Unmapped target classes are left out of ``n_classes``.
* ``error``: a model or dataset that fails becomes one row with the error; the table is still built.
"""
from __future__ import annotations

import fnmatch
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np

from .spec import HEAD_SETS, SPACES, STAT_TEMPERATURES, check_space, resolve_temperatures

COLUMNS = ["model", "weights", "dataset", "img_size", "split", "n_images", "n_classes", "space", "heads",
           "lam", "selected", "mAP", "delta", "CF1", "OF1", "exact", "seconds", "cached", "pool",
           "threshold", "error"]


# ---------------------------------------------------------------- option parsers
def parse_lams(text: Union[str, Iterable[float]]) -> List[float]:
    """``"0,0.1,0.3"``, ``"0:1:0.1"`` (start:stop:step, stop included) or a mix → sorted unique floats."""
    if not isinstance(text, str):
        values = [float(v) for v in text]
    else:
        values = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            try:
                if ":" in part:
                    start, stop, step = (float(x) for x in part.split(":"))
                    if not step > 0 or stop < start:
                        raise ValueError
                    n = int(math.floor((stop - start) / step + 1e-9)) + 1
                    values += [start + i * step for i in range(n)]
                else:
                    values.append(float(part))
            except ValueError:
                raise ValueError(f"bad λ list {text!r}: expected numbers and start:stop:step ranges "
                                 f"(step > 0, stop >= start), e.g. 0,0.1,0.3 or 0:1:0.1") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"bad λ list {text!r}: expected at least one finite number")
    return sorted({round(v, 10) + 0.0 for v in values})


def _items(text) -> list:
    return [p.strip() for p in text.split(",") if p.strip()] if isinstance(text, str) else list(text)


def parse_heads(text: Union[str, Iterable[int]]) -> List[int]:
    """``"1,4,8"`` → [1, 4, 8] (paper head counts)."""
    heads = [int(h) for h in _items(text) if str(h).isdigit()]
    if not heads or len(heads) != len(_items(text)) or any(h not in HEAD_SETS for h in heads):
        raise ValueError(f"bad head list {text!r}: comma-separated head counts from {sorted(HEAD_SETS)}")
    return list(dict.fromkeys(heads))


def parse_spaces(text: Union[str, Iterable[str]]) -> List[str]:
    if not _items(text):
        raise ValueError(f"bad space list {text!r}: use {','.join(SPACES)}")
    return list(dict.fromkeys(check_space(s) for s in _items(text)))


def _manifest_names(checkpoint) -> Optional[List[str]]:
    from .weights import read_manifest
    path = Path(checkpoint) if checkpoint is not None else None
    return list(read_manifest(path)) if path and (path.is_dir() or path.suffix == ".json") else None


def _timm_models() -> List[str]:
    import timm
    return timm.list_models()


def expand_models(specs: Union[str, Sequence[str], None], checkpoint=None) -> List[str]:
    """Names, wildcards and ``@file`` lists → model names. Wildcards match the manifest's entries
    when ``checkpoint`` is a manifest, else ``timm.list_models()``; no specs + a manifest → all entries."""
    specs = [specs] if isinstance(specs, str) else list(specs or [])
    specs = [s.strip() for spec in specs for s in spec.split(",") if s.strip()]
    manifest = _manifest_names(checkpoint)
    if not specs:
        if manifest is None:
            raise ValueError("no models: pass --models NAME[,NAME|WILDCARD|@FILE] or a --checkpoint manifest")
        return manifest
    names: List[str] = []
    for spec in specs:
        if spec.startswith("@"):
            path = Path(spec[1:]).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"--models {spec}: no such file {path}")
            lines = [ln.split("#", 1)[0].strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            names += expand_models([ln for ln in lines if ln], checkpoint)
        elif any(ch in spec for ch in "*?["):
            found = fnmatch.filter(manifest if manifest is not None else _timm_models(), spec)
            if not found:
                raise ValueError(f"--models {spec!r} matches no " + ("manifest entry" if manifest else "timm model"))
            names += found
        else:
            names.append(spec)
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------- evaluation from cached arrays
def class_map_for(num_classes: int, dataset):
    """None when the model's scores are the dataset's classes, else the ImageNet→dataset ClassMap."""
    if num_classes == len(dataset.classes):
        return None
    if num_classes == 1000 and dataset.label_space in ("voc2007", "coco2014"):
        from .classmaps import load_class_map
        return load_class_map(dataset.label_space).reorder(dataset.classes)
    raise ValueError(f"the model has {num_classes} classes, {dataset.name} has {len(dataset.classes)} "
                     f"({dataset.label_space}); no class map from one to the other (maps exist from "
                     f"ImageNet-1k to voc2007 and coco2014)")


def _pooled(scores: np.ndarray, members: List[List[int]], pool: str) -> np.ndarray:
    """(N, 1000) → (N, K) by max or sum over each mapped class's members (as ``map_scores``)."""
    reduce = np.max if pool == "max" else np.sum
    return np.stack([reduce(scores[:, m], axis=1) for m in members], axis=1)


def _split_metrics(base, att, lams, h, targets, ignore, members, pool, threshold):
    """mAP, CF1, OF1 (percent) per λ for one split, space and head set."""
    from .metrics import average_precision, average_precision_sweep, f1_scores

    scale = np.asarray(lams, np.float64) / h
    linear = members is None or pool == "sum"
    if linear and members is not None:
        base, att = _pooled(base, members, "sum"), _pooled(att, members, "sum")
    keep = ((targets > 0) & ~ignore).any(0)
    t, ign = targets[:, keep], ignore[:, keep]
    if linear:
        aps = average_precision_sweep(base[:, keep], att[:, keep], scale, t, ign)
    out = []
    for i, lam in enumerate(scale):
        s = base + np.float32(lam) * att if lam else base
        if not linear:
            s = _pooled(s, members, pool)
        ap = aps[i] if linear else average_precision(s[:, keep], t, ign)
        f1 = f1_scores(s[:, keep], t, threshold, ign)
        out.append((100 * float(np.nanmean(ap)) if keep.any() else math.nan, 100 * f1["CF1"], 100 * f1["OF1"]))
    return out, int(keep.sum())


def evaluate_stats(stats, targets, ignore, lams, heads_list=(1,), spaces=SPACES, *, class_map=None,
                   pool: str = "max", threshold: float = 0.5, select_on: Optional[str] = None,
                   val_fraction: float = 0.5, split_seed: int = 0, split=None):
    """Rows (split, n_images, n_classes, space, heads, lam, selected, mAP, delta, CF1, OF1, pool,
    threshold) from cached statistics alone (see the module docstring for their meaning).

    stats: ``{space}_base`` (N, C) and ``{space}_att`` (N, 8, C) at ``STAT_TEMPERATURES``.
    targets, ignore: (N, C_dataset). heads_list: paper head counts or tuples of temperatures.
    """
    import pandas as pd

    if pool not in ("max", "sum"):
        raise ValueError(f"pool must be 'max' or 'sum', got {pool!r}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if select_on not in (None, "val"):
        raise ValueError(f"select_on must be None or 'val', got {select_on!r}")
    lams = parse_lams(list(lams) + [0.0])
    targets, ignore = np.asarray(targets), np.asarray(ignore, bool)
    members = None
    if class_map is not None:
        mapped = class_map.mapped
        members = [m for m, ok in zip(class_map.members, mapped) if ok]
        targets, ignore = targets[:, mapped], ignore[:, mapped]
    n = len(targets)
    if select_on == "val":
        from .datasets import split_indices
        splits = dict(zip(("val", "test"), split if split is not None else split_indices(n, val_fraction, split_seed)))
    else:
        splits = {"all": None}
    rows = []
    for space in spaces:
        base_all, att_all = stats[f"{check_space(space)}_base"], stats[f"{space}_att"]
        space_pool = None if members is None else (pool if space == "prob" else "max")
        cut = math.log(threshold / (1 - threshold)) if space == "logit" else threshold  # sigmoid(s) >= t
        for heads in heads_list:
            temps = resolve_temperatures(heads)
            if any(t not in STAT_TEMPERATURES for t in temps):
                raise ValueError(f"heads {heads}: the cache holds T in {STAT_TEMPERATURES} only")
            att_h = att_all[:, [STAT_TEMPERATURES.index(t) for t in temps]].sum(axis=1)
            label = heads if isinstance(heads, int) else ",".join(f"{t:g}" for t in temps)
            for split, idx in splits.items():
                sel = slice(None) if idx is None else idx
                metrics, n_cls = _split_metrics(base_all[sel], att_h[sel], lams, len(temps), targets[sel],
                                                ignore[sel], members, space_pool or "max", cut)
                for lam, (m, cf1, of1) in zip(lams, metrics):
                    rows.append(dict(split=split, n_images=len(base_all[sel]), n_classes=n_cls, space=space,
                                     heads=label, lam=lam, mAP=m, CF1=cf1, OF1=of1, pool=space_pool,
                                     threshold=threshold))
    df = pd.DataFrame(rows)
    group = ["split", "space", "heads"]
    baseline = df[df["lam"] == 0].set_index(group)["mAP"]
    df["delta"] = df["mAP"].to_numpy() - baseline.reindex(pd.MultiIndex.from_frame(df[group])).to_numpy()
    df["selected"] = pd.array([pd.NA] * len(df), dtype="boolean")
    if select_on == "val":
        df["selected"] = False
        val = df[df["split"] == "val"]
        for (space, heads), g in val.groupby(["space", "heads"], sort=False):
            if g["mAP"].notna().any():
                best = g.loc[g["mAP"].idxmax(), "lam"]  # first maximum = the smaller λ
                df.loc[(df["space"] == space) & (df["heads"] == heads) & (df["lam"] == best), "selected"] = True
    return df


# ---------------------------------------------------------------- the benchmark
def _dataset(spec: str, size: int, cache: dict, seed: int, count: Optional[int]):
    from .datasets import parse_dataset
    is_mosaic = spec.startswith("mosaic")
    key = (spec, size if is_mosaic else None)
    if key not in cache:
        cache[key] = parse_dataset(spec, size=size, seed=seed, count=count if is_mosaic else None)
    return cache[key]


def _error_row(err: BaseException, **fields) -> dict:
    return {**fields, "error": f"{type(err).__name__}: {err}"}


@dataclass
class PreparedModel:
    """A loaded model with its two preprocessings (``full_frame`` False: timm's crop; True: no crop)."""

    name: str
    net: "torch.nn.Module"  # noqa: F821
    preprocessing: dict
    weights_label: str
    weights_key: str

    @property
    def img_size(self) -> int:
        return int(self.preprocessing[False][1]["input_size"][-1])


def prepare_model(name: str, img_size: Optional[int] = None, checkpoint=None,
                  pretrained: Optional[bool] = None) -> PreparedModel:
    import torch

    from .cache import weights_identity
    from .models import load_model
    from .scoring import data_transform

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random weights (pretrained=False) are then reproducible
        net = load_model(name, checkpoint=checkpoint, pretrained=pretrained,
                         **({"img_size": img_size} if img_size else {}))
    preprocessing = {False: data_transform(net, img_size), True: data_transform(net, img_size, crop_pct=1.0)}
    label, identity = weights_identity(name, checkpoint, pretrained, net)
    return PreparedModel(name, net, preprocessing, label, identity)


def dataset_statistics(prepared: PreparedModel, ds, cache_dir, runtime, batch_size: int = 32, workers: int = 2,
                       chunk_size: int = 128, progress: bool = True, desc: Optional[str] = None):
    """(stats, info, images computed) of a model on a dataset: from the cache, computing what is missing."""
    import timm

    from .cache import StatsCache, ensure_statistics
    from .scorer import CSRAScorer

    net = prepared.net
    transform, config = prepared.preprocessing[bool(getattr(ds, "full_frame", False))]
    fields = dict(model=prepared.name, weights=prepared.weights_key, timm=timm.__version__,
                  num_classes=net.num_classes, data_config=config, dataset=ds.fingerprint(), amp=runtime.amp)
    cache = StatsCache(cache_dir, fields, len(ds), net.num_classes, chunk_size)

    def make_scorer():
        scorer = runtime.prepare(CSRAScorer(net, input_size=config["input_size"]))
        runtime.compile_model(net)
        return scorer

    return ensure_statistics(cache, ds, transform, make_scorer, runtime, batch_size=batch_size, workers=workers,
                             progress=progress, desc=desc or f"{prepared.name} @{prepared.img_size}")


def load_statistics(model: str, dataset: str, *, img_size: Optional[int] = None, checkpoint=None,
                    pretrained: Optional[bool] = None, cache_dir=None, dataset_seed: int = 0,
                    mosaic_count: Optional[int] = None, device: str = "cpu", amp: str = "none",
                    batch_size: int = 32, workers: int = 2, progress: bool = True):
    """The cached per-location statistics ``run_bench`` uses for one model on one dataset spec
    (computed when missing) → (stats dict of arrays, scorer info, dataset)."""
    from .config import default_cache_dir
    from .runtime import Runtime

    prepared = prepare_model(model, img_size, checkpoint, pretrained)
    ds = _dataset(dataset, prepared.img_size, {}, dataset_seed, mosaic_count)
    stats, info, _ = dataset_statistics(prepared, ds, Path(cache_dir or default_cache_dir()),
                                        Runtime(device=device, amp=amp), batch_size, workers, progress=progress)
    return stats, info, ds


def _model_rows(name: str, datasets: Sequence[str], lams, heads, spaces, img_sizes, checkpoint, pretrained,
                select_on, val_fraction, split_seed, cache_dir, runtime_kwargs, batch_size, workers, pool,
                threshold, chunk_size, dataset_seed, mosaic_count, progress, dataset_cache) -> list:
    """Rows (DataFrames or error dicts) of one model over all sizes and datasets."""
    from .datasets import dataset_split
    from .runtime import Runtime

    parts: list = []
    runtime = Runtime(**runtime_kwargs)
    for img_size in img_sizes:
        where = dict(model=name, weights=None, img_size=img_size)
        try:
            prepared = prepare_model(name, img_size, checkpoint, pretrained)
            where.update(weights=prepared.weights_label, img_size=prepared.img_size)
        except Exception as err:
            parts += [_error_row(err, dataset=spec, **where) for spec in datasets]
            continue
        for spec in datasets:
            try:
                ds = _dataset(spec, prepared.img_size, dataset_cache, dataset_seed, mosaic_count)
                class_map = class_map_for(prepared.net.num_classes, ds)
                start = time.perf_counter()
                stats, info, computed = dataset_statistics(
                    prepared, ds, cache_dir, runtime, batch_size, workers, chunk_size, progress,
                    desc=f"{name} @{prepared.img_size} on {Path(spec).name or spec}")
                seconds = time.perf_counter() - start
                df = evaluate_stats(stats, ds.targets(), ds.ignore_mask(), lams, heads, spaces,
                                    class_map=class_map, pool=pool, threshold=threshold, select_on=select_on,
                                    val_fraction=val_fraction, split_seed=split_seed,
                                    split=dataset_split(ds, val_fraction, split_seed) if select_on else None)
                df = df.assign(dataset=spec, exact=info.get("exact"), seconds=round(seconds, 3),
                               cached=computed == 0, **where)
                df.attrs["backbone_images"] = computed
                parts.append(df)
                del stats
            except Exception as err:
                parts.append(_error_row(err, dataset=spec, **where))
    return parts


def run_bench(models, datasets: Union[str, Sequence[str]], lams=(0.0, 0.1), heads=(1,), spaces=SPACES,
              img_sizes: Optional[Sequence[Optional[int]]] = None, checkpoint=None,
              pretrained: Optional[bool] = None, select_on: Optional[str] = None, val_fraction: float = 0.5,
              split_seed: int = 0, cache_dir=None, device: str = "cpu", batch_size: int = 32, workers: int = 2,
              amp: str = "none", channels_last: bool = False, compile: bool = False, pool: str = "max",
              threshold: float = 0.5, chunk_size: int = 128, dataset_seed: int = 0,
              mosaic_count: Optional[int] = None, progress: bool = True, ray: bool = False):
    """The benchmark table (columns ``COLUMNS``; see the module docstring).

    models: names, wildcards, ``@file`` (see ``expand_models``); lams: floats or a ``parse_lams``
    string (λ=0 is always added); heads: head counts or "1,4,8"; spaces: "logit,prob" or a list;
    img_sizes: None (the model's own) and/or ints; pretrained=False: random weights seeded with 0.
    ``df.attrs["backbone_images"]`` counts the images that went through a backbone in this call.
    """
    import pandas as pd

    from .config import default_cache_dir
    from .runtime import Runtime

    names = expand_models(models, checkpoint)
    datasets = [datasets] if isinstance(datasets, str) else list(datasets)
    if not datasets:
        raise ValueError("no datasets: pass --dataset SPEC (imagenet-real:DIR, voc2007:DIR, ...)")
    lams, heads, spaces = parse_lams(lams), parse_heads(heads), parse_spaces(spaces)
    runtime_kwargs = dict(device=device, amp=amp, channels_last=channels_last, compile=compile)
    Runtime(**runtime_kwargs)  # validate device/amp before any work
    args = dict(datasets=datasets, lams=lams, heads=heads, spaces=spaces, img_sizes=list(img_sizes or [None]),
                checkpoint=checkpoint, pretrained=pretrained, select_on=select_on, val_fraction=val_fraction,
                split_seed=split_seed, cache_dir=Path(cache_dir or default_cache_dir()),
                runtime_kwargs=runtime_kwargs, batch_size=batch_size, workers=workers, pool=pool,
                threshold=threshold, chunk_size=chunk_size, dataset_seed=dataset_seed, mosaic_count=mosaic_count)
    if ray:
        try:
            import ray as _ray
        except ImportError:
            raise RuntimeError("ray=True / --ray needs Ray, which is not installed: "
                               "pip install 'posthoc-csra[ray]' (or run without --ray)") from None
        if not _ray.is_initialized():
            _ray.init()
        task = _ray.remote(_model_rows)
        results = _ray.get([task.remote(name, **args, progress=False, dataset_cache={}) for name in names])
    else:
        shared: dict = {}
        results = [_model_rows(name, **args, progress=progress, dataset_cache=shared) for name in names]
    frames = [p if isinstance(p, pd.DataFrame) else pd.DataFrame([p]) for rows in results for p in rows]
    table = pd.concat(frames, ignore_index=True)  # error rows stay in model/dataset order
    for column in COLUMNS:
        if column not in table:
            table[column] = None
    table["error"] = table["error"].astype("string")
    for column in ("img_size", "n_images", "n_classes", "heads"):
        try:
            table[column] = table[column].astype("Int64")
        except (TypeError, ValueError):
            pass  # explicit temperatures are labelled by strings
    table = table[COLUMNS + [c for c in table.columns if c not in COLUMNS]]
    table.attrs["backbone_images"] = sum(int(f.attrs.get("backbone_images", 0)) for f in frames)
    return table
