"""``tables.py``: atomic CSV (plain or gzip) / JSON / Parquet writers and the one Markdown table writer."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from posthoc_csra import tables
from posthoc_csra.errors import InputError


@pytest.fixture
def table():
    df = pd.DataFrame({"model": ["a", "b|c"], "mAP": [91.234, math.nan], "n": [3, 4],
                       "error": pd.array([None, None], dtype="string")})
    df.attrs.update(model="a", lam=0.1)
    return df


@pytest.mark.parametrize("ext", ["csv", "csv.gz", "json", "parquet"])
def test_write_table_round_trips_atomically(table, tmp_path, ext):
    path = tables.write_table(table, tmp_path / "sub" / f"t.{ext}")
    assert [p.name for p in path.parent.iterdir()] == [f"t.{ext}"]  # no temp file left
    back = {"csv": pd.read_csv, "csv.gz": pd.read_csv, "parquet": pd.read_parquet,
            "json": lambda p: pd.DataFrame(json.loads(p.read_text()))}[ext](path)
    assert list(back["model"]) == ["a", "b|c"] and back["mAP"][0] == pytest.approx(91.234) and pd.isna(back["mAP"][1])
    if ext == "parquet":
        assert tables.read_metadata(path) == {"model": "a", "lam": 0.1}  # table.attrs by default


def test_a_gzip_csv_holds_the_csv_and_the_same_table_gives_the_same_bytes(table, tmp_path):
    import gzip

    plain = tables.write_table(table, tmp_path / "t.csv").read_bytes()
    first = tables.write_table(table, tmp_path / "a" / "t.CSV.GZ").read_bytes()
    second = tables.write_table(table, tmp_path / "b" / "other.csv.gz").read_bytes()
    assert gzip.decompress(first) == plain and first == second and first[:2] == b"\x1f\x8b"
    assert first[3] == 0 and first[4:8] == bytes(4)  # header: no file name (FLG.FNAME unset), MTIME 0


def test_formats_are_matched_on_the_longest_ending(tmp_path):
    assert tables.table_format("x/t.csv.gz") == ".csv.gz" and tables.table_format("T.CSV") == ".csv"
    assert tables.with_format("d/t.csv.gz", ".md") == tables.with_format("d/t.csv", ".md") == Path("d/t.md")
    for bad in ("t.gz", "t.tar.gz", ".csv", "t"):
        with pytest.raises(InputError, match="unknown table format"):
            tables.check_table_path(tmp_path / bad)
    assert tables.describe_formats() == ".csv, .csv.gz, .json or .parquet"


def test_a_failing_write_leaves_the_old_file(table, tmp_path):
    path = tables.write_table(table, tmp_path / "t.parquet")
    before = path.read_bytes()
    bad = table.assign(mAP=[object(), object()])  # pyarrow cannot write these
    with pytest.raises(Exception):
        tables.write_table(bad, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_unknown_format_fails_before_writing(table, tmp_path):
    with pytest.raises(InputError, match=r"unknown table format '.xlsx'; use one of .csv, .csv.gz, .json, .parquet"):
        tables.write_table(table, tmp_path / "t.xlsx")
    assert not list(tmp_path.iterdir())
    assert tables.check_table_path(tmp_path / "t.md", (".md",)) == tmp_path / "t.md"


def test_to_markdown_default_and_formats(table):
    assert tables.to_markdown(table) == ("| model | mAP | n |\n|---|---|---|\n"
                                         "| a | 91.234 | 3 |\n| b\\|c |  | 4 |\n")  # no-error column dropped
    assert tables.to_markdown(table, ["n", "mAP"], {"mAP": ".1f"}) == "| n | mAP |\n|---|---|\n| 3 | 91.2 |\n| 4 |  |\n"


def test_to_markdown_writes_the_published_headline():
    """The published table's view: every column, Δ signed to 2 decimals, other floats as %g."""
    head = pd.DataFrame({"model": ["m"], "mAP λ=0": [94.1], "Δ": [0.5], "λ (val)": [0.25], "heads (val)": [1]})
    assert tables.to_markdown(head, formats={"Δ": "+.2f"}).splitlines()[2] == "| m | 94.1 | +0.50 | 0.25 | 1 |"


def test_write_text_is_atomic(tmp_path):
    tables.write_text(tmp_path / "a" / "t.md", "| x |\n")
    assert (tmp_path / "a" / "t.md").read_text() == "| x |\n" and len(list((tmp_path / "a").iterdir())) == 1


def test_bench_summary_counts_cached_and_failed_passes_apart():
    """A failed pass came neither from a backbone nor from the cache; the summary says so."""
    from posthoc_csra.cli.bench import passes_summary

    rows = [dict(model="a", img_size=224, dataset="voc", lam=lam, cached=True, error=None) for lam in (0, 0.1)]
    rows += [dict(model="b", img_size=224, dataset="voc", lam=lam, cached=False, error=None) for lam in (0, 0.1)]
    rows += [dict(model="c", img_size=None, dataset="voc", lam=None, cached=None, error="InputError: no weights")]
    table = pd.DataFrame(rows).astype({"cached": "boolean", "error": "string"})
    table.attrs["backbone_images"] = 12
    assert passes_summary(table) == ("backbone pass over 12 image(s), 1 of 3 pass(es) from the statistics cache, "
                                     "1 failed (see the error column)")
    assert passes_summary(table[table["model"] == "a"]) == ("backbone pass over 12 image(s), 1 of 1 pass(es) "
                                                            "from the statistics cache")
