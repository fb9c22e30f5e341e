"""Score every image under a folder with a model and the CSRA rule (the library behind ``posthoc-csra score``)."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import PosthocCsraError
from .choices import DEFAULT_FULL_FRAME, DEFAULT_MODEL
from .choices import format_temperatures, parse_temperatures
from .parsing import check_img_size
from .tables import check_table_path, write_table

if TYPE_CHECKING:  # the option objects are imported where they are used
    from .options import LoadOptions, ModelSource, RuleOptions, ScoreTableOptions
    from .runtime import Runtime

log = logging.getLogger("posthoc_csra")

#: The constant leading columns of a score table: the settings that produced it. ``preprocessing``:
#: "full frame" (the whole image resized to img_size) or "crop 0.875 (center)" (timm's eval crop).
SETTINGS_COLUMNS = ("model", "weights", "img_size", "preprocessing", "space", "lam", "temperatures")


class NothingScoredError(PosthocCsraError, RuntimeError):
    """No image under the folder could be scored (or ``strict`` and some failed)."""


@dataclass
class ScoreResult:
    """The table (one row per file: ``SETTINGS_COLUMNS``, image, error, top-k, and class scores with
    ``all_scores``), counts, and the settings that produced it (also in ``table.attrs``)."""

    table: "pandas.DataFrame"  # noqa: F821
    n_scored: int
    n_failed: int
    model_note: str
    output: Optional[Path] = None
    class_names: List[str] = field(default_factory=list)
    settings: Dict[str, object] = field(default_factory=dict)

    @property
    def temperatures(self) -> Tuple[float, ...]:
        return parse_temperatures(self.settings["temperatures"])


def unique_column_names(names: Sequence[str], reserved: Sequence[str] = ()) -> List[str]:
    """Class labels as column names; a label that repeats or is a ``reserved`` column gets its class index
    appended."""
    counts = {name: 1 for name in reserved}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [f"{name} ({i})" if counts[name] > 1 else name for i, name in enumerate(names)]


def cap_topk(topk: int, num_classes: int) -> int:
    """``topk``, or the class count with one warning line when it asks for more classes than the model has."""
    if topk > num_classes:
        log.warning("posthoc-csra: --topk %d is more than the model's %d classes; showing all %d", topk, num_classes,
                    num_classes)
    return min(topk, num_classes)


def score_folder(image_dir: Union[str, Path], model: str = DEFAULT_MODEL, rule: "RuleOptions" = None, *,
                 source: "ModelSource" = None, loading: "LoadOptions" = None,
                 runtime: Union["Runtime", Mapping, None] = None, img_size: Optional[int] = None,
                 full_frame: bool = DEFAULT_FULL_FRAME, card: Union[str, Path, None] = None,
                 table_options: "ScoreTableOptions" = None) -> ScoreResult:
    """Score every image under ``image_dir``; one row per file, bad files get an ``error``.

    rule: ``options.RuleOptions`` (λ, heads, space; default the project's defaults); source: which
    weights (``options.ModelSource``); loading: ``options.LoadOptions`` (batch_size, workers, progress);
    runtime: ``runtime.Runtime`` or its fields as a dict (device, AMP, channels_last, compile; default CPU).
    img_size: the input side (default the model's own); full_frame: the whole image resized to
    img_size × img_size (default; how the benchmark evaluates VOC2007 and how the default rule was chosen),
    False: timm's own eval transform, which centre-crops.
    ``card``: a scorer card (``bench --save-cards``); it sets the model, img_size, preprocessing and
    rule (``model``, ``rule``, ``img_size`` and ``full_frame`` are not used), refuses weights other
    than its own, and the table records it (columns ``method``, ``card``, ``card_sha256``).
    table_options: ``options.ScoreTableOptions`` (topk, all_scores, output, strict).

    The table starts with ``SETTINGS_COLUMNS`` (model, weights label, img_size, preprocessing, space, λ,
    temperatures), constant over the rows, so every written file says what produced it. ``output`` (a format
    of ``tables.TABLE_FORMATS``) is written atomically; Parquet also stores the settings in its schema metadata.

    Raises NothingScoredError when no image could be scored, or when ``strict`` and any failed. Every
    argument, the card and the folder (at least one file that opens as an image) are checked before torch
    is imported and the model loaded.
    """
    from .cards import read_card
    from .images import check_image_folder
    from .options import LoadOptions, ScoreTableOptions

    loading, table_options = loading or LoadOptions(), table_options or ScoreTableOptions()
    output, topk, img_size = check_table_path(table_options.output), table_options.topk, check_img_size(img_size)
    all_scores, strict = table_options.all_scores, table_options.strict
    scorer_card = read_card(card) if card is not None else None
    paths = check_image_folder(image_dir)

    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from .images import ImageFiles, collate_images, relative_name
    from .models import class_names, weights_of
    from .prepare import memory_guard, prepare_scorer

    with memory_guard(img_size, loading.batch_size):  # the message names --batch-size too
        prepared = prepare_scorer(model, rule, source=source, img_size=img_size, full_frame=full_frame,
                                  runtime=runtime, card=scorer_card)
    scorer, net, transform, config = prepared.scorer, prepared.net, prepared.transform, prepared.data_config
    runtime = prepared.runtime
    runtime.compile_model(net)
    scorer.report()
    names = class_names(net)
    topk = cap_topk(topk, scorer.num_classes)
    height, width = (int(v) for v in config["input_size"][-2:])
    settings = dict(model=prepared.model, weights=weights_of(net)[0],
                    img_size=height if height == width else f"{height}x{width}",
                    preprocessing=prepared.preprocessing.mode, space=scorer.space, lam=scorer.lam,
                    temperatures=format_temperatures(scorer.heads))
    if scorer_card is not None:
        from .cards import card_record

        settings.update(method=scorer.method, **card_record(card))

    files = ImageFiles(paths, image_dir, transform)
    loader = torch.utils.data.DataLoader(files, batch_size=loading.batch_size, num_workers=loading.workers,
                                         collate_fn=collate_images, pin_memory=runtime.torch_device.type == "cuda")
    scores = np.full((len(paths), scorer.num_classes), np.nan, dtype=np.float32)
    errors: List[Optional[str]] = [None] * len(paths)
    with torch.inference_mode(), memory_guard(height, loading.batch_size), \
            tqdm(total=len(paths), unit="img", disable=not loading.progress, desc=f"scoring {Path(image_dir).name}",
                 file=sys.stderr) as bar:
        for images, good, failures in loader:
            for index, error in failures:
                errors[index] = error
            if images is not None:
                with runtime.autocast():
                    batch_scores = scorer(runtime.inputs(images))
                scores[good] = batch_scores.float().cpu().numpy()
            bar.update(len(good) + len(failures))

    ok = np.array([e is None for e in errors])
    table = pd.DataFrame({**{k: [v] * len(paths) for k, v in settings.items()},
                          "image": [relative_name(p, image_dir) for p in paths],
                          "error": pd.array(errors, dtype="string")})
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), axis=1, kind="stable")[:, :topk]
    top_scores = np.take_along_axis(scores, order, axis=1)
    label_array = np.asarray(names, dtype=object)
    top = {}
    for rank in range(topk):
        top[f"top{rank + 1}"] = np.where(ok, label_array[order[:, rank]], None)
        top[f"top{rank + 1}_score"] = np.where(ok, top_scores[:, rank], np.nan)
    parts = [table, pd.DataFrame(top, index=table.index)]  # one concat: no column-by-column inserts
    if all_scores:
        class_columns = unique_column_names(names, reserved=[*table.columns, *top])
        parts.append(pd.DataFrame(scores, columns=class_columns, index=table.index))
    table = pd.concat(parts, axis=1)
    table.attrs.update(settings)

    result = ScoreResult(table, int(ok.sum()), int((~ok).sum()), scorer.describe(), output, names, settings)
    if output is not None:
        write_table(table, output)
    if result.n_scored == 0:
        raise NothingScoredError(f"none of the {len(paths)} files under {image_dir} could be scored; "
                                 f"first error: {table['image'][0]}: {errors[0]}")
    if strict and result.n_failed:
        raise NothingScoredError(f"--strict: {result.n_failed} of {len(paths)} files failed "
                                 f"(see the error column{' in ' + str(output) if output else ''})")
    return result
