"""Compare two ``published.py`` output folders: are the results the same?

    python benchmarks/compare_results.py benchmarks/results /tmp/other-results

Every CSV and Markdown file of the first folder is compared with the second's: ``published.csv`` cell by cell
without its run-time columns (``seconds``, ``cached``), the others byte for byte (figures are skipped). For
each difference it prints the rows and the largest change per numeric column. Exit status 0 when every file is
the same, 1 otherwise. Use it to check that a code change leaves the published numbers alone: run
``published.py --out DIR --no-readme`` from both versions on the same statistics cache and compare.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

RUN_TIME_COLUMNS = ("seconds", "cached")


def compare_table(a: Path, b: Path) -> list:
    import pandas as pd

    x = pd.read_csv(a).drop(columns=list(RUN_TIME_COLUMNS), errors="ignore")
    y = pd.read_csv(b).drop(columns=list(RUN_TIME_COLUMNS), errors="ignore")
    if list(x.columns) != list(y.columns) or len(x) != len(y):
        return [f"shape or columns differ: {x.shape} {list(x.columns)} vs {y.shape} {list(y.columns)}"]
    lines = []
    for column in x.columns:
        left, right = x[column], y[column]
        same = (left == right) | (left.isna() & right.isna())
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
    for path in sorted(p for p in args.first.iterdir() if p.suffix in (".csv", ".md")):
        other = args.second / path.name
        if not other.is_file():
            print(f"{path.name}: missing in {args.second}")
            differ = True
            continue
        if path.name == "published.csv":
            lines = compare_table(path, other)
        else:
            lines = [] if path.read_bytes() == other.read_bytes() else ["contents differ"]
        print(f"{path.name}: " + ("same" if not lines else "; ".join(lines)))
        differ = differ or bool(lines)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
