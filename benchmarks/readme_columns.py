"""Write the benchmark table's column meanings into README.md from ``evaluation.COLUMN_HELP`` (the one list).

    python benchmarks/readme_columns.py          # rewrites the block between the columns markers
"""
from __future__ import annotations

import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
MARK_START, MARK_END = "<!-- columns:start -->", "<!-- columns:end -->"


def columns_block() -> str:
    from posthoc_csra.evaluation import COLUMN_HELP

    lines = ["Every column of the `bench` table (`posthoc-csra bench --help` shows the same list); mAP, delta "
             "and F1 figures are percentages:", "", "| column | meaning |", "|---|---|"]
    lines += [f"| `{column}` | {meaning.replace('|', '/')} |" for column, meaning in COLUMN_HELP.items()]
    return "\n".join(lines) + "\n"


def updated(text: str) -> str:
    start, end = text.index(MARK_START) + len(MARK_START), text.index(MARK_END)
    return text[:start] + "\n" + columns_block() + text[end:]


def main() -> int:
    README.write_text(updated(README.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
