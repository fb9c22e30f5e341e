"""The CLI package: entry points, --version, lazy imports, no import cycle, and how errors are shown."""
import ast
import inspect
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import posthoc_csra
from posthoc_csra.choices import DEFAULT_HEADS
from posthoc_csra.cli import main
from posthoc_csra.errors import InputError

PACKAGE = Path(posthoc_csra.__file__).parent
COMMANDS = {"score", "bench", "explain"}


def _run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ["posthoc_csra", "posthoc_csra.cli"])
def test_python_dash_m_lists_every_command(module):
    result = _run("-m", module, "--help")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == COMMANDS | set(main.commands) and "Usage: posthoc-csra" in result.stdout


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"posthoc-csra, version {posthoc_csra.__version__}"


def test_importing_the_cli_imports_no_torch():
    code = ("import sys, posthoc_csra.cli; "
            "print(sorted(m for m in ('torch', 'timm', 'torchvision', 'pandas', 'matplotlib') if m in sys.modules))")
    result = _run("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _cli_modules():
    return sorted(f"posthoc_csra.cli.{p.stem}" for p in (PACKAGE / "cli").glob("*.py")
                  if p.stem not in ("__init__", "__main__")) + ["posthoc_csra.cli"]


@pytest.mark.parametrize("module", _cli_modules())
def test_each_cli_module_imports_first_in_a_fresh_interpreter(module):
    result = _run("-c", f"import {module}")
    assert result.returncode == 0, result.stderr


def _module_level_imports(path: Path, package: str):
    """posthoc_csra modules a file imports at module level (not inside functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("posthoc_csra")}
    return found


def test_no_import_cycle_from_the_cli():
    """The module-level import graph reachable from posthoc_csra.cli is acyclic, and no command module
    imports the package that registers it."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = (path, name if parts[-1] == "__init__" else ".".join(parts[:-1]))
    graph = {name: {t for t in _module_level_imports(path, pkg) if t in files and t != name}
             for name, (path, pkg) in files.items()}
    for name in _cli_modules():
        if name != "posthoc_csra.cli":
            assert "posthoc_csra.cli" not in graph[name], f"{name} imports the cli package"
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import cycle: " + " -> ".join(trail + [node])
        state[node] = "open"
        for target in sorted(graph[node]):
            visit(target, trail + [node])
        state[node] = "done"
    visit("posthoc_csra.cli", [])
    assert {"posthoc_csra.cli.options", "posthoc_csra.parsing"} <= set(state)


def test_explain_offers_only_the_options_it_uses():
    helps = {name: CliRunner().invoke(main, [name, "--help"]).output for name in COMMANDS}
    for flag in ("--batch-size", "--workers", "--compile"):
        assert flag not in helps["explain"] and flag in helps["score"] and flag in helps["bench"]
    for flag in ("--device", "--amp", "--channels-last", "--checkpoint", "--random-weights"):
        assert all(flag in text for text in helps.values()), flag


def test_shared_options_are_the_same_declaration_in_every_command():
    def options(command):
        return {p.name: (tuple(p.opts), p.default, p.help) for p in command.params if isinstance(p, click.Option)}
    score, bench, explain, export = (options(main.commands[n]) for n in ("score", "bench", "explain", "export"))
    for name in ("checkpoint", "random_weights", "device", "amp", "channels_last", "batch_size", "workers", "compile"):
        assert score[name] == bench[name], name
    for name in ("model", "lam", "heads", "temperatures", "space", "img_size", "full_frame", "device", "amp",
                 "checkpoint"):
        assert score[name] == explain[name], name
    for name in ("model", "lam", "heads", "temperatures", "space", "img_size", "full_frame", "checkpoint"):
        assert score[name] == export[name], name
    assert bench["heads"][1] == str(score["heads"][1]) == str(DEFAULT_HEADS)  # the same default head set


def test_defaults_live_in_one_place():
    from posthoc_csra.choices import DEFAULT_FULL_FRAME, DEFAULT_LAM, DEFAULT_SPACE
    from posthoc_csra.explain import explain_image
    from posthoc_csra.export import export_model
    from posthoc_csra.folder import score_folder
    from posthoc_csra.options import RuleOptions

    assert RuleOptions() == RuleOptions(DEFAULT_LAM, DEFAULT_HEADS, DEFAULT_SPACE)
    for function in (score_folder, explain_image, export_model):
        assert inspect.signature(function).parameters["full_frame"].default is DEFAULT_FULL_FRAME, function
    assert main.commands["score"].params[[p.name for p in main.commands["score"].params].index("full_frame")] \
        .default is DEFAULT_FULL_FRAME


# ---- errors: a PosthocCsraError is one line, anything else keeps its traceback ---------------------------

def test_user_error_in_a_command_is_one_line(monkeypatch, tmp_path):
    def bad_input(*args, **kwargs):
        raise InputError("the folder holds no photos of cats; pass one that does")
    monkeypatch.setattr("posthoc_csra.folder.score_folder", bad_input)
    result = CliRunner().invoke(main, ["score", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output == "Error: the folder holds no photos of cats; pass one that does\n"


@pytest.mark.parametrize("bug", [RuntimeError("internal bug"), ValueError("internal bug"), KeyError("bug")])
def test_other_exceptions_keep_their_traceback(monkeypatch, tmp_path, bug):
    def broken(*args, **kwargs):
        raise bug
    monkeypatch.setattr("posthoc_csra.folder.score_folder", broken)
    result = CliRunner().invoke(main, ["score", str(tmp_path)])
    assert result.exception is bug  # not turned into a one-line message: the runner saw the raw exception


def test_a_bug_prints_a_traceback_in_a_real_process(tmp_path):
    code = ("import sys, posthoc_csra.folder as s\n"
            "def broken(*a, **k): raise RuntimeError('internal bug')\n"
            "s.score_folder = broken\n"
            "from posthoc_csra.cli import main\n"
            f"main(['score', {str(tmp_path)!r}], prog_name='posthoc-csra')\n")
    result = _run("-c", code)
    assert result.returncode == 1 and "Traceback" in result.stderr and "RuntimeError: internal bug" in result.stderr
