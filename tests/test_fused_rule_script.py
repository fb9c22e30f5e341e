"""benchmarks/fused_rule.py (the fused-kernel experiment of issue 18): its kernel computes the paper's attention
terms (checked against float64 with the script's own tolerance), in both spaces, with a partial last tile of
classes. Needs a C++ compiler and ninja (torch.utils.cpp_extension); compiles once per machine."""
import shutil

import pytest


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")) or not shutil.which("ninja"),
                    reason="the experiment compiles a C++ kernel: needs a C++ compiler and ninja on PATH")
def test_the_kernel_matches_the_formula(capsys, benchmark_script):
    fused_rule = benchmark_script("fused_rule")
    assert fused_rule.main(["--batch", "3", "--locations", "49", "--classes", "37", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "logit: (B, L, C) = (3, 49, 37)" in out and "prob: (B, L, C) = (3, 49, 37)" in out


def test_a_wrong_kernel_is_caught(monkeypatch, capsys, benchmark_script):
    """The check itself can fail: a kernel whose terms are off by 1e-3 is reported and exits 1."""
    module = benchmark_script("fused_rule")

    class Off:
        @staticmethod
        def attention_terms(z, scale, temperatures):
            return module.formula64(z, temperatures, scale).float() + 1e-3

    monkeypatch.setattr("torch.utils.cpp_extension.load_inline", lambda *a, **k: Off)
    assert module.main(["--batch", "2", "--locations", "9", "--classes", "5", "--reps", "1"]) == 1
    assert "the kernel is off the formula" in capsys.readouterr().out



def test_published_rows_are_compared_with_the_reference(tmp_path, monkeypatch, capsys, benchmark_script):
    """--published: the rows published.py writes with the kernel are matched to the reference's by their keys
    (missing heads/λ, NaN, match NaN; so do NaN results); changed results are counted, mAPs that README would
    show differently, changed picks on validation, and in the tables made from them changed cells and rows with
    no counterpart."""
    import pandas as pd

    module = benchmark_script("fused_rule")
    base = {"model": "m", "weights": "w", "dataset": "voc", "img_size": 448, "split": "test", "pool": "max"}
    rows = [dict(base, method="model", space="logit", heads=None, lam=None, mAP=float("nan"), selected=True),
            dict(base, method="csra", space="logit", heads=1, lam=0.1, mAP=81.0, selected=False),
            dict(base, method="csra", space="prob", heads=8, lam=0.1, mAP=82.0, selected=True)]
    reference = pd.DataFrame([dict(r, **{k: 1.0 for k in module.RESULTS if k not in r}) for r in rows])
    changed = reference.copy()
    changed.loc[1, "mAP"] += 1e-9   # late digits only
    changed.loc[2, "mAP"] += 0.02   # visible at 2 decimals
    changed.loc[2, "selected"] = False
    head = pd.DataFrame([{"model": "m", "dataset": "voc", "img_size": 448, "space": s, "CSRA": 81.0, "Δ": 1.0}
                         for s in ("logit", "prob")])
    bands = head.assign(heads=1, lam=0.1).rename(columns={"CSRA": "mAP", "Δ": "delta"})
    per_class = head.assign(**{"class": "cat"}).rename(columns={"CSRA": "ap_csra", "Δ": "delta"})
    (tmp_path / "ref").mkdir()
    (tmp_path / "out").mkdir()
    reference.to_csv(tmp_path / "ref" / "published.csv.gz", index=False)
    for name, table in (("headline.csv", head), ("lambda_bands.csv", bands), ("per_class.csv", per_class.iloc[:1])):
        table.to_csv(tmp_path / "ref" / name, index=False)
    seen = {}

    class Published:
        @staticmethod
        def main(argv):
            from posthoc_csra import attention

            seen["argv"], seen["terms"] = argv, attention._exp_terms
            changed.to_csv(tmp_path / "out" / "published.csv.gz", index=False)
            head.assign(Δ=[1.0, 1.5]).to_csv(tmp_path / "out" / "headline.csv", index=False)
            bands.to_csv(tmp_path / "out" / "lambda_bands.csv", index=False)
            per_class.to_csv(tmp_path / "out" / "per_class.csv", index=False)
            return 0

    from posthoc_csra import attention

    eager = attention._exp_terms
    loaded = module.benchmark_module
    monkeypatch.setattr(module, "benchmark_module", lambda name: Published if name == "published" else loaded(name))
    missing = module.compare_published(tmp_path / "out", "m", object(), tmp_path / "ref" / "published.csv.gz")
    out = capsys.readouterr().out
    assert missing == 1 and attention._exp_terms is eager and seen["terms"] is not eager
    assert seen["argv"][seen["argv"].index("--cache-dir") + 1] == str(tmp_path / "out" / "cache")
    assert "3 rows, 3 compared" in out and "mAP: 2 of 3 differ" in out and "delta: 0 of 3 differ" in out
    assert "2 decimals (as README shows it): 1 differ; settings chosen on validation: 1 rows differ" in out
    assert "headline.csv: 2 of 2 rows compared (0 without a counterpart): Δ 1" in out
    assert "lambda_bands.csv: 2 of 2 rows compared (0 without a counterpart): every column the same" in out
    assert "per_class.csv: 1 of 2 rows compared (1 without a counterpart): every column the same" in out
