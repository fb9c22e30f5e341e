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
