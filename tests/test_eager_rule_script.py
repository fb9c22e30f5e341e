"""benchmarks/eager_rule.py (the eager alternatives of issue 18): every alternative it times computes the paper's
attention terms (checked against float64 with the script's own tolerance), and a wrong one is reported."""
import pytest


@pytest.fixture
def eager_rule(benchmark_script):
    return benchmark_script("eager_rule")


def test_every_alternative_matches_the_formula(monkeypatch, capsys, eager_rule):
    from posthoc_csra import attention

    # 7 temperatures × 7 classes × 9 locations > 2^8 values: every blocked path splits the classes of an image
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", 1 << 8)
    assert eager_rule.main(["--batch", "3", "--locations", "9", "--classes", "7", "--reps", "1", "--blocks", "8"]) == 0
    out = capsys.readouterr().out
    for name in ("package", "contiguous input", "block 2^8", "integer powers", "sdpa", "formula, blocked"):
        assert f"logit {name} " in out and f"prob  {name} " in out, name
    assert "OFF THE FORMULA" not in out


def test_a_wrong_alternative_is_caught(monkeypatch, capsys, eager_rule):
    module = eager_rule
    right = module.power_terms
    monkeypatch.setattr(module, "power_terms", lambda *a: [t + 1e-3 for t in right(*a)])
    assert module.main(["--batch", "2", "--locations", "9", "--classes", "5", "--reps", "1", "--blocks", ""]) == 1
    out = capsys.readouterr().out
    assert "integer powers" in out and "OFF THE FORMULA" in out
