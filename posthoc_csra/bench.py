"""``posthoc-csra bench``: models × datasets × λ × head sets × spaces → one tidy table of mAP.

Each (model, weights, dataset, preprocessing) gets one backbone pass, stored by ``cache.py``;
every λ / head set / space is then evaluated from the cached arrays alone. How a run is planned,
spread over an executor (local, Ray) and resumed: ``runner.py``; its options: ``options.py``.

Table columns: ``evaluation.COLUMNS``, each explained in ``evaluation.COLUMN_HELP`` (one row per model,
dataset, img_size, method, space, heads, λ and split; the metrics come from ``evaluation.evaluate_stats``).
Class maps: an ImageNet-1k model (1000 classes) on a voc2007/coco2014 dataset is scored through the
shipped WordNet class map; unmapped target classes are left out of ``n_classes``. A model or dataset
that fails becomes one row with its ``error``; the table is still built.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import List, Optional, Sequence, Union

from .classmaps import class_map_for  # noqa: F401  (moved to classmaps.py; re-exported)
from .errors import InputError, MissingInputError
from .evaluation import COLUMNS, evaluate_stats  # noqa: F401  (moved to evaluation.py; re-exported)
from .executors import LocalExecutor, RayExecutor  # noqa: F401  (re-exported)
from .options import EvalOptions, LoadOptions, ModelSource  # noqa: F401  (re-exported)
from .parsing import parse_heads, parse_lams, parse_spaces  # noqa: F401  (moved to parsing.py; re-exported)
from .runner import PreparedModel, load_statistics, prepare_model, run_bench  # noqa: F401  (runner.py)


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
