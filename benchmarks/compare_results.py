"""Compare two ``published.py`` output folders: are the results the same?

    python benchmarks/compare_results.py benchmarks/results /tmp/other-results

Every CSV and Markdown file of the first folder is compared with the second's: the table of every row
(``published.csv.gz``, or ``published.csv`` as folders before it was compressed wrote it: either name matches
either) cell by cell without its run-time columns (``seconds``, ``cached``), the others byte for byte (figures
are skipped). For each difference it prints the rows and the largest change per numeric column. Exit status 0
when every file is the same, 1 otherwise. Use it to check that a code change leaves the published numbers
alone: run ``published.py --out DIR --no-readme`` from both versions on the same statistics cache and compare.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

RUN_TIME_COLUMNS = ("seconds", "cached")
#: The names of the table of every row, newest first (compared cell by cell, matched with each other).
TABLE_NAMES = ("published.csv.gz", "published.csv")
#: The endings of the files compared.
COMPARED = (".csv", ".csv.gz", ".md")


def counterpart(path: Path, folder: Path) -> Path:
    """``path``'s file in ``folder``: the same name, or for the table of every row its other name."""
    other = folder / path.name
    if path.name in TABLE_NAMES and not other.is_file():
        return next((folder / n for n in TABLE_NAMES if (folder / n).is_file()), other)
    return other


def same_cells(left, right):
    """Which cells of two aligned columns are equal, a missing value equal to a missing value."""
    return (left == right) | (left.isna() & right.isna())


def compare_table(a: Path, b: Path) -> list:
    import pandas as pd

    x = pd.read_csv(a).drop(columns=list(RUN_TIME_COLUMNS), errors="ignore")
    y = pd.read_csv(b).drop(columns=list(RUN_TIME_COLUMNS), errors="ignore")
    if list(x.columns) != list(y.columns) or len(x) != len(y):
        return [f"shape or columns differ: {x.shape} {list(x.columns)} vs {y.shape} {list(y.columns)}"]
    lines = []
    for column in x.columns:
        left, right = x[column], y[column]
        same = same_cells(left, right)
        if not same.all():
            change = ""
            if left.dtype.kind == "f" and right.dtype.kind == "f":
                change = f", largest change {(left - right).abs().max():.3g}"
            lines.append(f"{column}: {int((~same).sum())} of {len(x)} rows differ{change}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    differ = False
    for path in sorted(p for p in args.first.iterdir() if p.name.endswith(COMPARED)):
        other = counterpart(path, args.second)
        if not other.is_file():
            print(f"{path.name}: missing in {args.second}")
            differ = True
            continue
        if path.name in TABLE_NAMES:
            lines = compare_table(path, other)
        else:
            lines = [] if path.read_bytes() == other.read_bytes() else ["contents differ"]
        name = path.name if other.name == path.name else f"{path.name} vs {other.name}"
        print(f"{name}: " + ("same" if not lines else "; ".join(lines)))
        differ = differ or bool(lines)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
