"""Export a whole scorer — backbone, per-location head and rule — as one ``torch.export`` program.

The program takes (B, 3, S, S) preprocessed images with a dynamic batch B ≥ 1 and returns the
(B, C) scores of the eager ``CSRAScorer``. It is saved with ``torch.export.save`` together with a
JSON record (``EXPORT_META``: model, weights, ``preprocessing`` — img_size, full_frame, crop_pct,
crop_mode, interpolation, mean, std, as a scorer card writes it; ``cards.Preprocessing.from_dict(...)
.transform()`` rebuilds the transform — rule, class names, the card used and its file's sha256).
Before success is declared the file is loaded back with ``torch.export.load`` and its scores on
real images are compared with the eager scorer's at batch 1 and at a larger batch. Optionally the
same program is converted to ONNX (``export_onnx``, the ``onnx`` extra) and checked with onnxruntime.

    program = torch.export.load("scorer.pt2").module()
    scores = program(images)            # (B, C)
"""
from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

from .choices import DEFAULT_FULL_FRAME
from .errors import InputError, MissingInputError, PosthocCsraError

if TYPE_CHECKING:  # torch stays out of import time
    import torch

    from .cards import Preprocessing, Rule, ScorerCard
    from .scorer import CSRAScorer

#: Name of the JSON record saved inside the program file (``torch.export.load(..., extra_files=...)``).
EXPORT_META = "posthoc_csra.json"
#: Default largest |exported − eager| score difference accepted by the check.
ATOL = 1e-5
#: Default tolerance of the ONNX check (onnxruntime's kernels are not PyTorch's).
ONNX_ATOL = 1e-4
#: Real images the check uses from a folder (sorted; the first ones).
CHECK_IMAGES = 3

PathLike = Union[str, Path]


class ExportCheckError(PosthocCsraError):
    """The exported program's scores differ from the eager scorer's (the file is not written)."""


@dataclass(frozen=True)
class ExportCheck:
    """The check of a saved program against the eager scorer on real images."""

    images: Tuple[str, ...]
    batch_sizes: Tuple[int, ...]
    max_abs_diff: float
    atol: float


@dataclass(frozen=True)
class ExportResult:
    path: Path
    check: ExportCheck
    metadata: dict
    onnx: Optional[Path] = None
    onnx_check: Optional[ExportCheck] = None


def check_images(path: Optional[PathLike] = None, limit: int = CHECK_IMAGES) -> List[Path]:
    """Real images for the check: ``path`` (a file, or the first ``limit`` images of a folder), by default
    the shared photos (``$POSTHOC_CSRA_SHARED/data/photos``)."""
    from .paths import shared_dir
    from .images import find_images

    if path is None:
        shared = shared_dir()
        path = shared / "data" / "photos" if shared is not None else None
        if path is None or not path.is_dir():
            raise MissingInputError("no real images to check the exported program on: pass --check-images "
                                    "FILE_OR_DIR, or set POSTHOC_CSRA_SHARED to a folder with data/photos")
    return find_images(path)[:limit]


def load_images(paths: Sequence[Path], transform) -> "torch.Tensor":
    """(N, 3, S, S) images through the model's own eval ``transform``; a file that does not decode is an error."""
    import torch

    from .images import ImageLoadError, load_rgb

    try:
        return torch.stack([transform(load_rgb(p)) for p in paths])
    except ImageLoadError as err:
        raise MissingInputError(f"--check-images: {err}") from None


def export_program(scorer: "CSRAScorer", example: "torch.Tensor"):
    """``torch.export`` of ``scorer`` with a dynamic batch dimension (B ≥ 1).

    ``example``: (B, 3, S, S); exported at batch ≥ 2 (a batch-1 example would specialise B to 1).
    """
    import torch
    from torch.export import Dim

    if example.shape[0] < 2:
        example = torch.cat([example, example.flip(-1)])[:2]
    with torch.no_grad():
        return torch.export.export(scorer.eval(), (example,), dynamic_shapes=({0: Dim("batch", min=1)},))


def load_program(path: PathLike):
    """(callable module (B, 3, S, S) → (B, C), metadata dict) of a saved program."""
    import torch

    extra = {EXPORT_META: ""}
    program = torch.export.load(str(path), extra_files=extra)
    return program.module(), json.loads(extra[EXPORT_META] or "{}")


def compare(module, scorer: "CSRAScorer", images: "torch.Tensor") -> Tuple[Tuple[int, ...], float]:
    """Largest |module − scorer| over the scores of ``images[:1]`` and of a batch of 3 (images and flips)."""
    import torch

    batch = torch.cat([images, images.flip(-1), images.flip(-2)])[:max(3, len(images))]
    worst = 0.0
    with torch.no_grad():
        for x in (batch[:1], batch):
            expected, got = scorer(x).float(), module(x).float()
            if got.shape != expected.shape:
                return (1, len(batch)), math.inf
            worst = max(worst, float((got - expected).abs().max()))
    return (1, len(batch)), worst


def export_scorer(scorer: "CSRAScorer", images: "torch.Tensor", output: PathLike, metadata: Optional[dict] = None,
                  atol: float = ATOL, image_names: Sequence[str] = (), onnx: Optional[PathLike] = None
                  ) -> ExportResult:
    """Export ``scorer``, save it to ``output`` (+ ``metadata``), load it back and check it on ``images``.

    images: (N, 3, S, S) real preprocessed images; S is the program's input size. Raises
    ExportCheckError (and leaves no file) when the loaded program's scores differ by more than ``atol``.
    ``onnx``: also write an ONNX model there (``export_onnx``), checked the same way.
    """
    import torch

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp.pt2")  # torch.export.load wants a .pt2 name
    images = images.to(next(scorer.parameters()).device)
    program = export_program(scorer, images)
    meta = dict(metadata or {}, input_size=[3, *images.shape[-2:]], torch=torch.__version__)
    try:
        torch.export.save(program, str(tmp), extra_files={EXPORT_META: json.dumps(meta)})
        module, _ = load_program(tmp)
        batch_sizes, diff = compare(module, scorer, images)
        check = ExportCheck(tuple(image_names), batch_sizes, diff, atol)
        if not diff <= atol:
            raise ExportCheckError(
                f"the exported program's scores differ from the eager scorer's by {diff:.3g} (> {atol:g}) on "
                f"{', '.join(image_names) or 'the check images'} at batch sizes {batch_sizes}; {output} not "
                f"written. This model does not export faithfully; score it with the eager scorer instead")
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    onnx_check = None if onnx is None else export_onnx(program, scorer, images, onnx, image_names=image_names)
    return ExportResult(output, check, meta, None if onnx is None else Path(onnx), onnx_check)


def _onnx_session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def export_onnx(program, scorer: "CSRAScorer", images: "torch.Tensor", output: PathLike, atol: float = ONNX_ATOL,
                image_names: Sequence[str] = ()) -> ExportCheck:
    """Convert an exported ``program`` to ONNX (dynamic batch) at ``output`` and check it with onnxruntime
    against the eager scorer as ``export_scorer`` does. Needs the optional ``onnx`` extra."""
    import torch

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"ONNX export needs {', '.join(missing)}, not installed: pip install 'posthoc-csra[onnx]' "
                         f"(or export without --onnx)")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    large = sum(p.numel() * p.element_size() for p in scorer.parameters()) > 2 ** 30  # protobuf's 2 GiB limit
    example = images[:2] if len(images) >= 2 else torch.cat([images, images.flip(-1)])
    written = [output, Path(f"{output}.data")]  # the weights go to FILE.data beside a large model
    try:
        with torch.no_grad():
            torch.onnx.export(program, (example,), str(output), dynamo=True, external_data=large, verbose=False)
        session = _onnx_session(output)
        name = session.get_inputs()[0].name
        batch_sizes, diff = compare(lambda x: torch.from_numpy(session.run(None, {name: x.cpu().numpy()})[0]),
                                    scorer, images.cpu())
        if not diff <= atol:
            raise ExportCheckError(f"the ONNX model's scores (onnxruntime) differ from the eager scorer's by "
                                   f"{diff:.3g} (> {atol:g}) at batch sizes {batch_sizes}; {output} removed")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return ExportCheck(tuple(image_names), batch_sizes, diff, atol)


def scorer_metadata(scorer: "CSRAScorer", model_name: str, preprocessing: "Preprocessing",
                    card: Optional["ScorerCard"] = None, card_path: Optional[PathLike] = None) -> dict:
    """The JSON record saved with a program: what it computes, on which ``preprocessing`` (the card's
    fields: img_size, full_frame, crop_pct, crop_mode, interpolation, mean, std), from which card."""
    from .cards import card_record, card_to_dict
    from .models import class_names, weights_of

    label, identity = weights_of(scorer.model)
    meta = dict(model=model_name, weights={"label": label, "identity": identity}, method=scorer.method,
                space=scorer.space, lam=scorer.lam, heads=[h.card_value for h in scorer.heads],
                exact=scorer.exact, preprocessing=preprocessing.to_dict(), classes=class_names(scorer.model))
    if card is not None:
        meta["card"] = card_to_dict(card)
    if card_path is not None:
        meta["card_file"] = card_record(card_path)
    return meta


def export_card(card: PathLike, output: PathLike, checkpoint=None, pretrained: Optional[bool] = None,
                images: Optional[PathLike] = None, atol: float = ATOL, onnx: Optional[PathLike] = None
                ) -> ExportResult:
    """``posthoc-csra export --card``: the card's scorer (weights checked) at the card's preprocessing,
    exported and checked on real images."""
    from .cards import read_card
    from .options import ModelSource
    from .prepare import prepare_scorer

    scorer_card = read_card(card)
    paths = check_images(images)
    prepared = prepare_scorer(source=ModelSource(checkpoint, pretrained), card=scorer_card)
    meta = scorer_metadata(prepared.scorer, scorer_card.model, prepared.preprocessing, scorer_card, card)
    return export_scorer(prepared.scorer, load_images(paths, prepared.transform), output, meta, atol,
                         [p.name for p in paths], onnx)


def export_model(output: PathLike, rule: "Rule", model: str, checkpoint=None, pretrained: Optional[bool] = None,
                 img_size: Optional[int] = None, images: Optional[PathLike] = None, atol: float = ATOL,
                 onnx: Optional[PathLike] = None, full_frame: bool = DEFAULT_FULL_FRAME) -> ExportResult:
    """``posthoc-csra export`` with model and rule options (as ``score``): the program takes images preprocessed
    at ``img_size`` (default the model's own), full frame (default, as ``score``) or centre-cropped, as its
    metadata's ``preprocessing`` records."""
    from .options import ModelSource
    from .parsing import check_img_size
    from .prepare import prepare_scorer

    img_size = check_img_size(img_size)
    paths = check_images(images)
    prepared = prepare_scorer(model, rule, source=ModelSource(checkpoint, pretrained), img_size=img_size,
                              full_frame=full_frame)
    return export_scorer(prepared.scorer, load_images(paths, prepared.transform), output,
                         scorer_metadata(prepared.scorer, model, prepared.preprocessing), atol,
                         [p.name for p in paths], onnx)


__all__ = ["EXPORT_META", "ATOL", "ONNX_ATOL", "ExportCheckError", "ExportCheck", "ExportResult", "check_images",
           "load_images", "export_program", "load_program", "compare", "export_scorer", "export_onnx", "scorer_metadata",
           "export_card", "export_model"]
