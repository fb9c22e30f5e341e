"""The dataset registry: one ``DatasetKind`` per spec prefix (``DATASETS``), and the functions that read a
spec's chain of kinds (``dataset_kind``, ``dataset_options``, ``is_size_dependent``) and build it
(``parse_dataset``). Wrapping kinds never parse their inner spec themselves: ``parse_dataset`` builds it and
hands it over, so no reader module imports the registry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import InputError
from .base import DatasetOptions, MultiLabelDataset, split_option
from .coco import build_coco, build_coco2014
from .csv_file import build_csv
from .imagenet_real import build_imagenet_real
from .mosaic import mosaic_builder
from .selection import build_part, build_subset, part_parts, subset_parts
from .voc import build_voc2007

__all__ = ["DatasetKind", "DATASETS", "dataset_kind", "dataset_options", "is_size_dependent", "parse_dataset"]


@dataclass(frozen=True)
class DatasetKind:
    """One spec prefix: its syntax, its builder and what it takes.

    ``build(spec, arg, DatasetOptions) -> dataset``; for a wrapping kind (``inner`` set: ``arg -> the
    wrapped spec``) ``build(spec, arg, DatasetOptions, inner dataset)``, the inner dataset built by
    ``parse_dataset`` with the size and the given options the wrapping kind does not use itself.
    ``options``: the ``parse_dataset`` keywords it uses itself; ``default_split``: set when it reads
    ``@SPLIT`` ("": the split must be written); ``size_dependent``: built at the evaluation size (which
    ``parse_dataset`` then requires)."""

    prefix: str
    syntax: str
    build: Callable[..., MultiLabelDataset]
    options: frozenset = frozenset()
    default_split: Optional[str] = None
    inner: Optional[Callable[[str], str]] = None
    size_dependent: bool = False


def _mosaic_kind(prefix: str, k: int) -> DatasetKind:
    return DatasetKind(prefix, f"{prefix}:SPEC", mosaic_builder(k), frozenset({"seed", "count"}),
                       inner=lambda arg: arg, size_dependent=True)


DATASETS: dict[str, DatasetKind] = {kind.prefix: kind for kind in (
    DatasetKind("imagenet-real", "imagenet-real:DIR", build_imagenet_real),
    DatasetKind("voc2007", "voc2007:DIR[@SPLIT]", build_voc2007, default_split="test"),
    DatasetKind("coco2014", "coco2014:DIR[@SPLIT]", build_coco2014, default_split="val"),
    DatasetKind("coco", "coco:DIR@SPLIT", build_coco, default_split=""),
    DatasetKind("csv", "csv:FILE", build_csv, frozenset({"classes_file"})),
    _mosaic_kind("mosaic", 2),
    _mosaic_kind("mosaic2", 2),
    _mosaic_kind("mosaic3", 3),
    DatasetKind("subset", "subset:N[:SEED]:SPEC", build_subset, inner=lambda arg: subset_parts(arg)[2]),
    DatasetKind("part", "part:K/N[:SEED]:SPEC", build_part, inner=lambda arg: part_parts(arg)[3]),
)}


def dataset_kind(spec: str) -> DatasetKind:
    """The registered kind of ``spec``'s prefix (``InputError`` listing the known ones otherwise)."""
    prefix, sep, _ = str(spec).partition(":")
    if not sep or prefix not in DATASETS:
        raise InputError(f"unknown dataset spec {spec!r}; known prefixes: "
                         f"{', '.join(p + ':' for p in DATASETS)} "
                         f"({'; '.join(k.syntax for k in DATASETS.values())})")
    return DATASETS[prefix]


def _chain(spec: str) -> list[DatasetKind]:
    """The kinds of ``spec`` and of every spec it wraps, outermost first."""
    kinds = []
    while True:
        kind = dataset_kind(spec)
        kinds.append(kind)
        if kind.inner is None:
            return kinds
        spec = kind.inner(str(spec).partition(":")[2])


def dataset_options(spec: str) -> frozenset:
    """The ``parse_dataset`` keywords (classes_file, seed, count) that ``spec`` uses, wrapped specs included."""
    return frozenset().union(*(kind.options for kind in _chain(spec)))


def is_size_dependent(spec: str) -> bool:
    """True when the dataset is built at the evaluation size (a mosaic, or a spec wrapping one)."""
    return any(kind.size_dependent for kind in _chain(spec))


def parse_dataset(spec: str, *, size: Optional[int] = None, classes_file=None, seed: Optional[int] = None,
                  count: Optional[int] = None) -> MultiLabelDataset:
    """Dataset for ``spec`` (``PREFIX:ARG``, see ``DATASETS``); ``size``: the evaluation size (used by
    size-dependent specs only); classes_file / seed / count: only for specs that take them."""
    kind = dataset_kind(spec)
    takes = dataset_options(spec)
    given = {k: v for k, v in (("classes_file", classes_file), ("seed", seed), ("count", count))
             if v is not None}
    for option in given:
        if option not in takes:
            users = [p for p, k in DATASETS.items() if option in k.options]
            raise InputError(f"{kind.prefix}: {option} applies to {', '.join(users)} specs only "
                             f"(got {spec!r})")
    arg, split = str(spec).partition(":")[2], None
    if kind.default_split is not None:
        arg, split = split_option(arg, kind.default_split)
    if kind.size_dependent and size is None:
        raise InputError(f"{kind.prefix}: size is required (mosaics are composed at the evaluation resolution; "
                         f"pass size=224 or the model's input size)")
    opts = DatasetOptions(size=size, split=split, **given)
    if kind.inner is None:
        return kind.build(str(spec), arg, opts)
    inner_spec = kind.inner(arg)
    passed = dataset_options(inner_spec) - kind.options
    inner = parse_dataset(inner_spec, size=size, **{k: v for k, v in given.items() if k in passed})
    return kind.build(str(spec), arg, opts, inner)
