"""benchmarks/perf.py is ready to run as recorded: a dry run with the GPU record's flags works on the CPU
(every section, every head set and space), a CUDA command line says clearly when there is no CUDA, and the
report keeps its CPU part and its GPU block apart."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PERF = ROOT / "benchmarks" / "perf.py"


@pytest.fixture
def perf(benchmark_script):
    return benchmark_script("perf")


def _run(*args, timeout=900):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(PERF), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def test_dry_run_with_the_gpu_flags_on_the_cpu(shared, tmp_path, perf):
    """The command the GPU record is made with, checked here on the CPU: every section runs, the report has every
    head set and space of (a), the statistics pass with its breakdown and memory, and the GPU block."""
    out = tmp_path / "perf.md"
    result = _run("--dry-run", "--device", "cpu", "--amp", "bf16", "--threads", "1", "--output", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = out.read_text()
    assert "amp bf16" in report and "**dry run**" in report
    for heading in ("## (a)", "## (b)", "## (c)", "## (d)", "### Where the time goes"):
        assert heading in report
    for model in perf.DRY_RUN["models"]:
        for label, _, _ in perf.SCORER_CONFIGS:
            assert f"| {label} |" in report
        assert f"| {model} |" in report
    for stage in ("backbone", "per-location head", "attention terms", "pooling baselines", "cache writes",
                  "decode + transform"):
        assert stage in report
    assert "| statistics pass |" in report and "| plain timm loop |" in report and "| backbone alone |" in report
    assert perf.GPU_START in report and perf.GPU_COMMAND in report  # no GPU run yet: how to make one
    assert not (ROOT / "benchmarks" / "results" / "perf.md").read_text().count("**dry run**")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: the dry run below runs it")
def test_a_cuda_command_without_cuda_says_so_before_any_work(tmp_path):
    result = _run("--device", "cuda", "--amp", "bf16", "--dry-run", "--output", str(tmp_path / "perf.md"), timeout=120)
    assert result.returncode == 2 and not (tmp_path / "perf.md").exists()
    assert "--device cuda" in result.stderr and "CUDA is not available" in result.stderr
    assert "python benchmarks/perf.py --device cuda --amp bf16" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dry_run_on_cuda(shared, tmp_path):
    out = tmp_path / "perf.md"
    result = _run("--dry-run", "--device", "cuda", "--amp", "bf16", "--output", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "## GPU run" in out.read_text() and "amp bf16" in out.read_text()


def test_dry_run_never_writes_the_record_by_default(perf):
    args = perf.parse_args(["--dry-run", "--sections", "c"])
    assert Path(args.output).parent != perf.HERE / "results" and args.reps == 1 and args.budget == 0
    assert perf.parse_args([]).output == str(perf.HERE / "results" / "perf.md")


def test_report_keeps_the_cpu_part_and_the_gpu_block_apart(perf):
    cpu = "# posthoc-csra performance benchmark\n\n- Device: CPU\n\n## (a) cpu table\n"
    gpu = "# posthoc-csra performance benchmark\n\n- Device: H200\n\n## (a) gpu table\n"
    first = perf.merge_report(None, cpu, cuda=False)
    assert first.startswith(cpu.rstrip("\n")) and "No GPU run yet" in first and perf.GPU_COMMAND in first
    with_gpu = perf.merge_report(first, gpu, cuda=True)
    assert "## (a) cpu table" in with_gpu and "### (a) gpu table" in with_gpu and "No GPU run yet" not in with_gpu
    assert with_gpu.count(perf.GPU_START) == 1 and with_gpu.index("cpu table") < with_gpu.index(perf.GPU_START)
    again = perf.merge_report(with_gpu, cpu.replace("cpu table", "new cpu table"), cuda=False)
    assert "new cpu table" in again and "### (a) gpu table" in again and again.count(perf.GPU_START) == 1
    assert perf.merge_report(again, gpu.replace("gpu table", "new gpu"), cuda=True).count("gpu table") == 0
