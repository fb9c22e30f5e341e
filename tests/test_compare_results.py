"""benchmarks/compare_results.py: published results compared without their run-time columns."""
import pandas as pd
import pytest


@pytest.fixture
def compare(benchmark_script):
    return benchmark_script("compare_results")


def _folder(path, mAP, seconds, md="| table |\n"):
    path.mkdir()
    pd.DataFrame({"model": ["a", "b"], "mAP": mAP, "note": [None, "x"], "seconds": seconds,
                  "cached": [True, False]}).to_csv(path / "published.csv", index=False)
    (path / "published.md").write_text(md)
    return path


def test_same_results_with_other_run_times(tmp_path, capsys, compare):
    a = _folder(tmp_path / "a", [70.5, 80.25], [1.0, 2.0])
    b = _folder(tmp_path / "b", [70.5, 80.25], [9.0, 0.1])
    assert compare.main([str(a), str(b)]) == 0
    assert "published.csv: same" in capsys.readouterr().out


def test_a_changed_number_or_file_is_reported(tmp_path, capsys, compare):
    a = _folder(tmp_path / "a", [70.5, 80.25], [1.0, 2.0])
    b = _folder(tmp_path / "b", [70.5, 80.0], [1.0, 2.0], md="| other |\n")
    assert compare.main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "mAP: 1 of 2 rows differ, largest change 0.25" in out and "published.md: contents differ" in out
    (b / "published.md").unlink()
    assert compare.main([str(a), str(b)]) == 1
    assert "published.md: missing" in capsys.readouterr().out


def test_the_compressed_table_matches_the_old_name(tmp_path, capsys, compare):
    """A folder from before the table was compressed (published.csv) against one after (published.csv.gz):
    the two names are the same table, compared cell by cell (a changed cell still shows)."""
    old = _folder(tmp_path / "old", [70.5, 80.25], [1.0, 2.0])
    new = _folder(tmp_path / "new", [70.5, 80.25], [3.0, 4.0])
    table = pd.read_csv(new / "published.csv")
    (new / "published.csv").unlink()
    table.to_csv(new / "published.csv.gz", index=False)
    assert compare.main([str(new), str(old)]) == 0
    assert "published.csv.gz vs published.csv: same" in capsys.readouterr().out
    assert compare.main([str(old), str(new)]) == 0
    assert "published.csv vs published.csv.gz: same" in capsys.readouterr().out
    table.assign(mAP=[70.5, 80.0]).to_csv(new / "published.csv.gz", index=False)
    assert compare.main([str(old), str(new)]) == 1
    assert "mAP: 1 of 2 rows differ, largest change 0.25" in capsys.readouterr().out
