"""Where does each class score come from? Per-location score maps (and attention) over the image.

Computing and drawing are separate (like pytorch-grad-cam's ``show_cam_on_image``): ``explain_image``
runs one backbone pass, ranks the classes by their CSRA score and returns, per class, the
per-location scores ``s`` (the input of the CSRA attention, in the chosen space) and the attention
weights; ``render`` draws them over the region of the photo the model saw: the whole photo (full frame,
the default) or timm's centre crop.
"""
from __future__ import annotations

import difflib
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError
from .attention import parse_head
from .parsing import check_img_size, check_topk
from .spaces import get_space
from .choices import DEFAULT_FULL_FRAME, DEFAULT_MODEL

if TYPE_CHECKING:  # the option objects are imported where they are used
    from .options import ModelSource, RuleOptions
    from .runtime import Runtime

FIGURE_FORMATS = (".png", ".jpg", ".jpeg", ".pdf", ".svg")
DEFAULT_CROP_PCT = 0.875  # timm.data.DEFAULT_CROP_PCT, what timm uses when crop_pct is None
Box = Tuple[float, float, float, float]


def crop_box(image_size: Tuple[int, int], config: Mapping) -> Box:
    """(left, top, right, bottom) of the region of a (W, H) image that timm's eval transform feeds the model.

    Mirrors ``timm.data.transforms_imagenet_eval`` for the data config (``input_size``, ``crop_pct``,
    ``crop_mode`` center / squash / border, ``crop_border_pixels``): resize (shorter side to
    ``img_size / crop_pct`` for center, both sides for squash, longer side for border), then center
    crop (or pad) to ``img_size``. In original pixel coordinates; it lies outside the image where
    border mode pads.
    """
    width, height = image_size
    out_h, out_w = (int(v) for v in config["input_size"][-2:])
    crop_pct = config.get("crop_pct") or DEFAULT_CROP_PCT
    mode = config.get("crop_mode") or "center"
    trim = int(config.get("crop_border_pixels") or 0)
    x0, y0 = min(trim, height), min(trim, height)  # timm's TrimBorder clamps both to the height
    width, height = max(0, width - 2 * trim), max(0, height - 2 * trim)
    scale_h, scale_w = math.floor(out_h / crop_pct), math.floor(out_w / crop_pct)
    if mode == "squash":
        new_h, new_w = scale_h, scale_w
    elif mode == "center" and scale_h == scale_w:  # torchvision Resize(int): shorter side
        short, long = sorted((width, height))
        new_short, new_long = scale_h, int(scale_h * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    else:  # timm ResizeKeepRatio: longest=0 (center, non-square) or 1 (border)
        ratios = (height / scale_h, width / scale_w)
        ratio = max(ratios) if mode == "border" else min(ratios)
        new_h, new_w = round(height / ratio), round(width / ratio)

    def offset(size: int, crop: int) -> int:  # torchvision / timm center crop, padding when too small
        return -((crop - size) // 2) if crop > size else int(round((size - crop) / 2.0))

    sx, sy = width / new_w, height / new_h
    left, top = offset(new_w, out_w), offset(new_h, out_h)
    return (x0 + left * sx, y0 + top * sy, x0 + (left + out_w) * sx, y0 + (top + out_h) * sy)


def short_name(label: str) -> str:
    """The first synonym of a class label ("Boston bull, Boston terrier" → "Boston bull")."""
    return label.split(",")[0].strip()


def match_classes(queries: Sequence[str], names: Sequence[str]) -> List[int]:
    """Class indices whose label, or any comma-separated synonym of it, equals a query (case-insensitive).

    A name shared by several classes (ImageNet's two "crane"s) selects all of them. Unknown names
    raise InputError with the closest synonyms.
    """
    synonyms: Dict[str, List[int]] = {}
    spelled: Dict[str, str] = {}  # lower case → as the label writes it
    for index, label in enumerate(names):
        for text in (label, *label.split(",")):
            key = text.strip().lower()
            if key and index not in synonyms.setdefault(key, []):
                synonyms[key].append(index)
                spelled.setdefault(key, text.strip())
    found: List[int] = []
    for query in queries:
        hits = synonyms.get(query.strip().lower())
        if hits is None:
            close = difflib.get_close_matches(query.strip().lower(), list(synonyms), n=5, cutoff=0.6)
            hint = f"; close matches: {', '.join(repr(spelled[c]) for c in close)}" if close else ""
            raise InputError(f"unknown class name {query!r} (none of the model's {len(names)} class labels "
                             f"or their synonyms){hint}")
        found += [i for i in hits if i not in found]
    return found


@dataclass
class Explanation:
    """Per-class maps for one image. Maps are (k, H, W) on the model's location grid, row-major over the crop."""

    image: Path
    model: str
    image_size: Tuple[int, int]  # (W, H) of the original image
    crop_box: Box  # (left, top, right, bottom) in original pixels: what the model saw
    grid: Tuple[int, int]
    classes: List[int]
    names: List[str]
    base: np.ndarray  # (k,) the model's scores in ``space``
    csra: np.ndarray  # (k,) base + λ·attention
    maps: np.ndarray  # (k, H, W) per-location scores s in ``space``
    attention: Dict[object, np.ndarray] = field(default_factory=dict)  # head → (k, H, W) its weights (``AttentionHead.weights``)
    lam: float = 0.1
    temperatures: Tuple[float, ...] = (math.inf,)
    space: str = "logit"
    preprocessing: str = ""  # how the image was fed to the model: "448 px, full frame", "224 px, crop 0.875 (center)"

    @property
    def short_names(self) -> List[str]:
        return [short_name(n) for n in self.names]

    def to_image(self, row: float, col: float) -> Tuple[float, float]:
        """Grid coordinates (cell centres at integers) → (x, y) in original image pixels."""
        left, top, right, bottom = self.crop_box
        height, width = self.grid
        return (left + (col + 0.5) * (right - left) / width, top + (row + 0.5) * (bottom - top) / height)

    def peak(self, index: int) -> Tuple[float, float]:
        """(x, y) in original image pixels of the centre of the highest cell of map ``index``."""
        row, col = np.unravel_index(int(np.argmax(self.maps[index])), self.grid)
        return self.to_image(row, col)


def _format_score(value: float, space: str) -> str:
    return f"{value:.{get_space(space).digits}f}"


def _format_t(t) -> str:
    return parse_head(t).describe()


def check_figure_path(output: Union[str, Path]) -> Path:
    """``output`` as a Path when its extension is a figure format ``render`` writes."""
    path = Path(output)
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise InputError(f"--output {path}: unknown figure format {path.suffix!r}; use one of "
                         f"{', '.join(FIGURE_FORMATS)}")
    return path


def default_figure_path(image: Union[str, Path]) -> Path:
    """``<image stem>_csra.png`` in the current directory."""
    return Path(f"{Path(image).stem}_csra.png")


def explain_image(path, model: str = DEFAULT_MODEL, rule: "RuleOptions" = None, *, source: "ModelSource" = None,
                  runtime: Union["Runtime", Mapping, None] = None, img_size: Optional[int] = None,
                  full_frame: bool = DEFAULT_FULL_FRAME, classes: Optional[Sequence[str]] = None,
                  topk: int = 3) -> Explanation:
    """Score one image with the CSRA rule and return per-class score maps (one backbone pass; draws nothing,
    see ``render``).

    Args:
        rule: ``options.RuleOptions`` (λ, heads, space); attention weights (``AttentionHead.weights``) are kept
            for every head that has them (the finite temperatures T). source: which weights (``options.ModelSource``).
        runtime: ``runtime.Runtime`` or its fields as a dict (device, AMP, channels_last; default CPU).
        img_size: the input side (default the model's own). full_frame: the whole image resized to
            img_size × img_size (default, as ``score``); False: timm's centre crop (objects near the borders
            are not seen). The result records it (``preprocessing``).
        classes: class names to show (any synonym of the label, case-insensitive); default the
            ``topk`` classes by CSRA score. Shown classes are ordered by CSRA score.
    """
    from .images import load_rgb

    topk, img_size = check_topk(topk), check_img_size(img_size)
    image = load_rgb(path)  # a missing or broken image fails before torch is imported

    import torch

    from .folder import cap_topk
    from .models import class_names
    from .prepare import memory_guard, prepare_scorer

    prepared = prepare_scorer(model, rule, source=source, img_size=img_size, full_frame=full_frame, runtime=runtime)
    net, scorer, runtime, config = prepared.net, prepared.scorer, prepared.runtime, prepared.data_config
    lam, space = scorer.lam, scorer.space
    names = class_names(net)
    chosen = match_classes(classes, names) if classes else None
    scorer.report()
    with memory_guard(img_size), torch.inference_mode(), runtime.autocast():
        out = scorer.forward_locations(runtime.inputs(prepared.transform(image).unsqueeze(0)))
    with torch.inference_mode():
        base = scorer.score_space.base(out.logits.float())[0]
        s = scorer.location_scores(out.location_logits, space)[0]  # (C, L)
        scores = scorer.score_output(out)[0]
    order = torch.argsort(scores, descending=True, stable=True)
    keep = order[:cap_topk(topk, len(names))] if chosen is None else \
        order[torch.isin(order, torch.tensor(chosen, device=order.device))]
    grid = tuple(int(v) for v in out.grid)
    maps = s[keep].reshape(len(keep), *grid)
    weights = {h: h.weights(maps.flatten(1)) for h in scorer.heads}  # None: the head draws no map
    attention = {h: w.reshape(maps.shape).cpu().numpy() for h, w in weights.items() if w is not None}
    idx = keep.cpu().tolist()
    return Explanation(
        image=Path(path), model=model, image_size=image.size, crop_box=crop_box(image.size, config), grid=grid,
        classes=idx, names=[names[i] for i in idx], base=base[keep].cpu().numpy(), csra=scores[keep].cpu().numpy(),
        maps=maps.cpu().numpy(), attention=attention, lam=float(lam), temperatures=tuple(scorer.heads),
        space=space, preprocessing=prepared.preprocessing.describe())


def _upsample(maps: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(k, h, w) → (k, H, W) bilinear (half-pixel centres, as the grid cells tile the crop)."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    return torch.nn.functional.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def _attention_rows(temperatures: Sequence, attention: Dict) -> List:
    drawn = sorted((parse_head(t) for t in temperatures if t in attention), key=lambda h: h.sort_key())
    return drawn if len(drawn) <= 2 else drawn[-1:]


def render(result: Explanation, output: Union[str, Path], image=None, max_side: int = 448,
           max_columns: int = 5, dpi: int = 120) -> Path:
    """Draw ``result`` into ``output`` (written atomically): one panel per class, plus attention rows for
    finite T. ``image``: the decoded image when at hand (else it is read again from ``result.image``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .cache import atomic_path
    from .images import load_rgb

    output = check_figure_path(output)
    image = image if image is not None else load_rgb(result.image)
    left, top, right, bottom = result.crop_box
    crop = image.crop(tuple(int(round(v)) for v in result.crop_box))  # zero fill where border mode pads
    scale = min(1.0, max_side / max(crop.size))
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
    pixels = np.asarray(crop)
    extent = (left, right, bottom, top)  # axes in original image pixels

    rows = [None] + _attention_rows(result.temperatures, result.attention)  # None: the score map
    k = len(result.classes)
    ncols = math.ceil(k / math.ceil(k / max_columns))
    nrows = math.ceil(k / ncols) * len(rows)
    aspect = (bottom - top) / max(right - left, 1e-9)
    fig = Figure(figsize=(4.6 * ncols, (3.7 * aspect + 0.7) * nrows + 0.5), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    for i, name in enumerate(result.short_names):
        for r, t in enumerate(rows):
            ax = fig.add_subplot(nrows, ncols, ((i // ncols) * len(rows) + r) * ncols + i % ncols + 1)
            values = result.maps[i] if t is None else result.attention[t][i]
            ax.imshow(pixels, extent=extent, interpolation="bilinear")
            shown = ax.imshow(_upsample(values[None], pixels.shape[:2])[0], extent=extent, cmap="jet",
                              alpha=0.4, interpolation="nearest")
            x, y = result.to_image(*np.unravel_index(int(np.argmax(values)), result.grid))
            ax.plot([x], [y], marker="+", color="white", markersize=16, markeredgewidth=3)
            ax.set_axis_off()
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=9)
            if t is None:
                title = (f"{name} — base {_format_score(result.base[i], result.space)} · CSRA "
                         f"{_format_score(result.csra[i], result.space)} (λ={result.lam:g}, {result.space})")
            else:
                title = f"{name} — {t.weights_title()}"
            ax.set_title(textwrap.fill(title, 44), fontsize=11)
    heads = ",".join(_format_t(t) for t in result.temperatures)
    what = get_space(result.space).location_label
    fed = f" at {result.preprocessing}" if result.preprocessing else ""
    fig.suptitle(textwrap.fill(f"{result.image.name} · {result.model}{fed} · heads T={{{heads}}} · per-location "
                               f"score s = {what} on a {result.grid[0]}×{result.grid[1]} grid (+ = peak)",
                               int(10 * fig.get_figwidth())), fontsize=12)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=dpi, format=output.suffix.lower().lstrip("."))
    return output
