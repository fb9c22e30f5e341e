"""``posthoc-csra bench``: models × datasets × λ × head sets × spaces → one tidy table of mAP, and the scorer
cards chosen from it.

Each (model, weights, dataset, preprocessing) gets one backbone pass, stored by ``cache.py``;
every λ / head set / space is then evaluated from the cached arrays alone. How a run is planned,
spread over an executor (local, process pool, Ray) and resumed: ``runner.py``; its options: ``options.py``.

Table columns: ``evaluation.COLUMNS``, each explained in ``evaluation.COLUMN_HELP`` (one row per model,
dataset, img_size, method, space, heads, λ and split; the metrics come from ``evaluation.evaluate_stats``).
Class maps: an ImageNet-1k model (1000 classes) on a voc2007/coco2014 dataset is scored through the
shipped WordNet class map; unmapped target classes are left out of ``n_classes``. A model or dataset
that fails becomes one row with its ``error``; the table is still built.

Cards: ``cards_from_table`` keeps, per (model, dataset), the choice a ``select_on="val"`` table made (card
*selection*; reading a card into a scorer is ``prepare.py``'s, the card format ``cards.py``'s).
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from .methods import METHODS
from .cards import (Choice, Preprocessing, Rule, ScorerCard, Weights, _number)
from .choices import HEAD_SETS, parse_temperatures, resolve_heads
from .errors import InputError, MissingInputError
from .executors import Executor, LocalExecutor
from .options import EvalOptions, LoadOptions, ModelSource
from .prepare import prepare_model
from .runner import BenchRun, RunStats


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
            raise InputError("no models: pass --models NAME[,NAME|WILDCARD|@FILE] or a --checkpoint manifest")
        return manifest
    names: List[str] = []
    for spec in specs:
        if spec.startswith("@"):
            path = Path(spec[1:]).expanduser()
            if not path.is_file():
                raise MissingInputError(f"--models {spec}: no such file {path}; write one model name per line in it")
            lines = [ln.split("#", 1)[0].strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            names += expand_models([ln for ln in lines if ln], checkpoint)
        elif any(ch in spec for ch in "*?["):
            found = fnmatch.filter(manifest if manifest is not None else _timm_models(), spec)
            if not found:
                raise InputError(f"--models {spec!r} matches no " + ("manifest entry" if manifest else "timm model"))
            names += found
        else:
            names.append(spec)
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------- the library functions
def _start(models, datasets, img_sizes, source: ModelSource, loading: LoadOptions, runtime, cache_dir,
           executor: Optional[Executor], extra_heads: tuple = ()) -> BenchRun:
    """Check every option and dataset (no model loaded yet) → a run ready to execute."""
    from .paths import default_cache_dir
    from .parsing import parse_img_sizes
    from .runtime import Runtime

    specs = [datasets] if isinstance(datasets, str) else list(dict.fromkeys(datasets or []))
    if not specs:
        raise InputError("no datasets: pass --dataset SPEC (imagenet-real:DIR, voc2007:DIR, ...)")
    names = expand_models(models, source.checkpoint)
    sizes = parse_img_sizes(list(img_sizes)) if img_sizes else [None]
    return BenchRun(names, specs, sizes or [None], source, loading, runtime if runtime is not None else Runtime(),
                    Path(cache_dir or default_cache_dir()).expanduser(), executor or LocalExecutor(), extra_heads)


def run_bench(models, datasets: Union[str, Sequence[str]], evaluation: EvalOptions = EvalOptions(),
              loading: LoadOptions = LoadOptions(), runtime=None, *,
              img_sizes: Optional[Sequence[Optional[int]]] = None, source: ModelSource = ModelSource(),
              cache_dir=None, executor: Optional[Executor] = None):
    """The benchmark table: models × img_sizes × datasets, evaluated with ``evaluation`` (columns
    ``evaluation.COLUMNS``; a model or dataset that fails becomes a row with its ``error``).

    models: names, wildcards, ``@file`` (``bench.expand_models``); datasets: specs (checked before
    any model is loaded); img_sizes: None (each model's own) and/or ints; runtime: a
    ``runtime.Runtime`` (default CPU); executor: where chunk tasks run (default ``LocalExecutor``).
    ``attrs["backbone_images"]``: images through a backbone in this call; ``attrs["run"]``: ``RunStats``.
    """
    from .choices import extra_heads

    run = _start(models, datasets, img_sizes, source, loading, runtime, cache_dir, executor,
                 extra_heads(evaluation.heads))
    return run.execute().table(evaluation)


def statistics_pass(models, datasets: Union[str, Sequence[str]], loading: LoadOptions = LoadOptions(), runtime=None,
                    *, img_sizes: Optional[Sequence[Optional[int]]] = None, source: ModelSource = ModelSource(),
                    cache_dir=None, executor: Optional[Executor] = None) -> RunStats:
    """``bench``'s statistics pass alone: every missing cache chunk computed and written, no table
    (benchmarks/perf.py times it) → what the run did (``RunStats``)."""
    return _start(models, datasets, img_sizes, source, loading, runtime, cache_dir, executor).execute().stats


def load_statistics(model: str, dataset: str, loading: LoadOptions = LoadOptions(), runtime=None, *,
                    img_size: Optional[int] = None, source: ModelSource = ModelSource(), cache_dir=None,
                    executor: Optional[Executor] = None):
    """The cached statistics ``run_bench`` evaluates for one model on one dataset spec (computed
    when missing) → (stats: arrays by ``cache.STAT_KEYS`` plus ``logit_base``, scorer info, dataset)."""
    run = _start([model], [dataset], [img_size], source, loading, runtime, cache_dir, executor).execute()
    stats, info = run.load(run.passes[0])
    return stats, info, run.passes[0].dataset


# ---------------------------------------------------------------- bench table → cards
def _temperatures(row: dict) -> Tuple[float, ...]:
    """A table row's head set: its ``temperatures`` cell ("1,2,4,inf", read by ``choices``), else (a table from
    before that column) its heads cell (a paper head count, also as 4.0 after a CSV round trip, or temperatures
    "1,inf"); missing (method model or a baseline) → H=1."""
    if not _is_missing(row.get("temperatures")):
        return parse_temperatures(str(row["temperatures"]))
    heads = row.get("heads")
    if _is_missing(heads):
        return HEAD_SETS[1]
    text = str(heads)
    try:
        count = float(text)
    except ValueError:
        return parse_temperatures(text)
    return HEAD_SETS[int(count)] if count in HEAD_SETS else resolve_heads((count,))


def parse_methods(text: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """``"model,csra"`` (or a list) → the methods a card may keep, each one of ``METHODS``."""
    items = [m.strip() for m in text.split(",")] if isinstance(text, str) else [str(m) for m in text]
    items = [m for m in items if m]
    unknown = [m for m in items if m not in METHODS]
    if not items or unknown:
        raise InputError(f"bad method list {text!r}: comma-separated methods from {', '.join(METHODS)}")
    return tuple(dict.fromkeys(items))


#: On equal val mAP the simpler choice wins (``Method.simplicity``): the model itself, then CSRA (the table's order
#: within: smaller λ, fewer heads), then the baselines.
_LEAST_SIMPLE = max(m.simplicity for m in METHODS.values())


def chosen_rows(table, methods: Sequence[str]) -> List[Tuple[dict, Optional[dict]]]:
    """Per (model, dataset): the selected val row with the best val mAP among ``methods``, and its test row
    (same img_size, method, space, heads, temperatures and λ)."""
    needed = {"model", "dataset", "dataset_spec", "img_size", "split", "method", "space", "heads", "lam", "selected",
              "mAP"}
    missing = sorted(needed - set(table.columns))
    if missing:
        raise InputError(f"the bench table has no column(s) {', '.join(missing)}; pass the table run_bench returns")
    table = table[table["error"].isna()] if "error" in table else table
    val = table[(table["split"] == "val") & table["selected"].fillna(False).astype(bool) & table["mAP"].notna()
                & table["method"].isin(list(methods))]
    if val.empty:
        raise InputError(f"the bench table has no selected validation rows of method {', '.join(methods)}: "
                         f"cards keep a choice made on a validation split; run bench with --select-on val")
    rank = val["method"].map(lambda m: METHODS[m].simplicity if m in METHODS else _LEAST_SIMPLE)
    val = val.assign(_rank=rank).sort_values(["mAP", "_rank"], ascending=[False, True], kind="stable")
    chosen = []
    for _, group in val.groupby(["model", "dataset"], sort=False):
        best = group.iloc[0].to_dict()
        test = table[(table["split"] == "test") & (table["model"] == best["model"])
                     & (table["dataset"] == best["dataset"])]
        for key in ("img_size", "method", "space", "heads", "temperatures", "lam"):
            if key not in best:  # a table from before the temperatures column
                continue
            test = test[test[key].isna()] if _is_missing(best[key]) else test[test[key] == best[key]]
        chosen.append((best, test.iloc[0].to_dict() if len(test) else None))
    return chosen


def _is_missing(value) -> bool:
    """None, NaN or pandas' NA (a table cell)."""
    import pandas as pd

    return value is None or (not isinstance(value, (str, tuple, list)) and bool(pd.isna(value)))


def cards_from_table(table, source: Optional["ModelSource"] = None, loading: Optional["LoadOptions"] = None,
                     methods: Sequence[str] = tuple(METHODS)) -> List[ScorerCard]:
    """One card per (model, dataset) of a ``run_bench(..., select_on="val")`` table.

    The card keeps the selected row with the best validation mAP over img sizes, methods (only
    ``methods``), spaces and head sets, with the test mAP of the same choice. ``source`` and
    ``loading``: the run's (as given to ``run_bench``); its models are loaded and its datasets built
    again the way the run did, to record the weights identity, preprocessing and fingerprint.
    """
    import timm

    from .runner import build_dataset

    source, loading = source or ModelSource(), loading or LoadOptions()
    models, cards = {}, []
    for best, test in chosen_rows(table, methods):
        size = None if _is_missing(best["img_size"]) else int(best["img_size"])
        if (best["model"], size) not in models:
            models[best["model"], size] = prepare_model(best["model"], size, source)
        prepared = models[best["model"], size]
        ds = build_dataset(str(best["dataset_spec"]), prepared.img_size, loading)
        full_frame = bool(getattr(ds, "full_frame", False))
        method, lam = str(best["method"]), _number(best["lam"])
        if method in METHODS and METHODS[method].takes_rule and lam == 0:
            method = "model"  # λ = 0 is the model itself
        rule = Rule(method=method, space=str(best["space"]), temperatures=_temperatures(best),
                    lam=lam or 0.0, pool=None if _is_missing(best.get("pool")) else str(best["pool"]))
        choice = Choice(dataset=str(ds.short_name), fingerprint=ds.fingerprint(), val_mAP=float(best["mAP"]),
                        test_mAP=None if test is None else _number(test["mAP"]), n_val=_count(best.get("n_images")),
                        n_test=None if test is None else _count(test.get("n_images")))
        cards.append(ScorerCard(
            model=str(best["model"]), num_classes=int(prepared.net.num_classes),
            weights=Weights(prepared.weights_label, prepared.weights_key),
            preprocessing=Preprocessing.from_data_config(prepared.preprocessing[full_frame][1], full_frame),
            rule=rule, chosen_with=choice, timm=timm.__version__))
    return cards


def _count(value) -> Optional[int]:
    return None if _is_missing(value) else int(value)


__all__ = ["expand_models", "run_bench", "statistics_pass", "load_statistics", "parse_methods", "chosen_rows",
           "cards_from_table"]
