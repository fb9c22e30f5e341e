"""Score every image under a folder with a model and the CSRA rule (the library behind ``posthoc-csra score``)."""
from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import PosthocCsraError
from .choices import DEFAULT_FULL_FRAME, DEFAULT_MODEL, MULTI_OBJECT_IMG_SIZE, format_temperatures, parse_temperatures
from .parsing import check_img_size, check_topk
from .tables import check_table_path, write_table

if TYPE_CHECKING:  # the option objects are imported where they are used
    from .options import LoadOptions, ModelSource, RuleOptions
    from .runtime import Runtime

log = logging.getLogger("posthoc_csra")

#: The constant leading columns of a score table: the settings that produced it. ``preprocessing``:
#: "full frame" (the whole image resized to img_size) or "crop 0.875 (center)" (timm's eval crop).
SETTINGS_COLUMNS = ("model", "weights", "img_size", "preprocessing", "space", "lam", "temperatures")


class NothingScoredError(PosthocCsraError, RuntimeError):
    """No image under the folder could be scored (or ``strict`` and some failed)."""


class OutOfMemoryError(PosthocCsraError, MemoryError):
    """The backbone did not fit in memory at this input size and batch size; the message names the options."""


def _is_out_of_memory(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or any(
        words in text for words in ("out of memory", "can't allocate memory", "not enough memory"))


@contextlib.contextmanager
def memory_guard(img_size: Optional[int], batch_size: Optional[int] = None):
    """Turn an allocator failure inside the block into one ``OutOfMemoryError`` line naming ``--img-size``
    (None: the model's own) and ``--batch-size``; every other exception passes unchanged."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if not _is_out_of_memory(err):
            raise
        size = f"--img-size {img_size}" if img_size else "the model's own input size"
        batch = f", --batch-size {batch_size}" if batch_size else ""
        raise OutOfMemoryError(f"out of memory running the model at {size}{batch}: pass a smaller --img-size "
                               f"(the model's own size, or {MULTI_OBJECT_IMG_SIZE} for multi-object photos)"
                               f"{' or a smaller --batch-size' if batch_size else ''}") from None


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


def data_transform(model, img_size: Optional[int] = None, full_frame: bool = False):
    """(transform, data config): timm's own eval preprocessing for the model, at ``img_size`` when given.

    ``full_frame``: the whole image resized to img_size × img_size (timm's ``crop_mode="squash"`` with
    ``crop_pct=1``), no centre crop — how the paper evaluates VOC and COCO, whose labels cover the whole frame.
    """
    from timm.data import create_transform, resolve_model_data_config

    config = resolve_model_data_config(model)
    if img_size is not None:
        config["input_size"] = (3, img_size, img_size)
    if full_frame:
        config.update(crop_pct=1.0, crop_mode="squash")
    return create_transform(**config, is_training=False), config


def make_runtime(runtime: Union["Runtime", Mapping, None]) -> "Runtime":
    """A ``runtime.Runtime``: as given, built from its fields (a dict: the CLI's device options, so torch is
    imported only after the inputs are checked), or the default (CPU)."""
    from .runtime import Runtime

    if runtime is None:
        return Runtime()
    return Runtime(**runtime) if isinstance(runtime, Mapping) else runtime


def cap_topk(topk: int, num_classes: int) -> int:
    """``topk``, or the class count with one warning line when it asks for more classes than the model has."""
    if topk > num_classes:
        log.warning("posthoc-csra: --topk %d is more than the model's %d classes; showing all %d", topk, num_classes,
                    num_classes)
    return min(topk, num_classes)


def score_folder(image_dir: Union[str, Path], model: str = DEFAULT_MODEL, rule: "RuleOptions" = None, *,
                 source: "ModelSource" = None, loading: "LoadOptions" = None,
                 runtime: Union["Runtime", Mapping, None] = None, img_size: Optional[int] = None,
                 full_frame: bool = DEFAULT_FULL_FRAME, topk: int = 5, all_scores: bool = False,
                 output: Union[str, Path, None] = None, strict: bool = False,
                 card: Union[str, Path, None] = None) -> ScoreResult:
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

    The table starts with ``SETTINGS_COLUMNS`` (model, weights label, img_size, preprocessing, space, λ,
    temperatures), constant over the rows, so every written file says what produced it. ``output`` (.csv,
    .json, .parquet) is written atomically; Parquet also stores the settings in its schema metadata.

    Raises NothingScoredError when no image could be scored, or when ``strict`` and any failed. Every
    argument, the card and the folder (at least one file that opens as an image) are checked before torch
    is imported and the model loaded.
    """
    from .cards import Preprocessing, read_card
    from .images import check_image_folder
    from .options import LoadOptions, ModelSource, RuleOptions

    rule, source, loading = rule or RuleOptions(), source or ModelSource(), loading or LoadOptions()
    output = check_table_path(output)
    topk, img_size = check_topk(topk), check_img_size(img_size)
    scorer_card = read_card(card) if card is not None else None
    paths = check_image_folder(image_dir)

    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from .images import ImageFiles, collate_images, relative_name
    from .models import check_model_name, class_names, load_model, weights_of
    from .scorer import CSRAScorer

    runtime = make_runtime(runtime)
    lam, space = rule.lam, rule.space
    if scorer_card is None:
        check_model_name(model)
        with memory_guard(img_size, loading.batch_size):
            net = load_model(model, checkpoint=source.checkpoint, pretrained=source.pretrained,
                             **({"img_size": img_size} if img_size else {}))
            transform, config = data_transform(net, img_size, full_frame)
            scorer = CSRAScorer(net, lam=lam, heads=rule.temperatures, space=space, input_size=config["input_size"])
        preprocessing = Preprocessing.from_data_config(config, full_frame)
    else:
        from .cards import load_card_scorer

        preprocessing = scorer_card.preprocessing
        with memory_guard(preprocessing.img_size, loading.batch_size):
            net, scorer = load_card_scorer(scorer_card, source.checkpoint, source.pretrained)
        transform, config = preprocessing.transform(), preprocessing.data_config()
        model, lam, space = scorer_card.model, scorer.lam, scorer.space
    scorer = runtime.prepare(scorer)
    runtime.compile_model(net)
    scorer.report()
    names = class_names(net)
    topk = cap_topk(topk, scorer.num_classes)
    height, width = (int(v) for v in config["input_size"][-2:])
    settings = dict(model=model, weights=weights_of(net)[0], img_size=height if height == width else f"{height}x{width}",
                    preprocessing=preprocessing.mode, space=space, lam=lam,
                    temperatures=format_temperatures(scorer.temperatures))
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
