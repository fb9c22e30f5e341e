"""Option checks (``parsing.py``): one check per option, the same for every command and the library.

Every bad value is one line naming the option and the fix, a non-zero exit and no traceback. Option
values are checked while the command line is parsed, so none of these loads a model.
"""
import math

import pytest
from click.testing import CliRunner

from posthoc_csra import choices, parsing
from posthoc_csra.cli import main
from posthoc_csra.errors import InputError, PosthocCsraError


# ---- the checks themselves ---------------------------------------------------------------------------

@pytest.mark.parametrize("check, good, bad", [
    (parsing.check_lam, [0, 0.0, 0.3, 5], [-1, -1e-9, math.nan, math.inf, "x"]),
    (parsing.check_topk, [1, 5], [0, -3, 1.5, True, "3"]),
    (parsing.check_batch_size, [1, 64], [0, -1, 2.0]),
    (parsing.check_workers, [0, 4], [-1, 0.5]),
    (parsing.check_img_size, [None, 32, 224], [31, 0, -5, 224.0]),
])
def test_checks_accept_and_reject(check, good, bad):
    for value in good:
        assert check(value) == value
    for value in bad:
        with pytest.raises(InputError):
            check(value)


def test_img_size_says_why_at_least_32():
    with pytest.raises(InputError, match=r"img_size must be an integer >= 32 .*downsample by up to 32.*got 0"):
        parsing.check_img_size(0)


def test_parse_img_sizes():
    assert parsing.parse_img_sizes(("default", "448,default", "224")) == [None, 448, 224]
    assert parsing.parse_img_sizes(()) is None and parsing.parse_img_sizes([None, 96]) == [None, 96]
    for bad in (("0",), ("-5",), ("x",), ("16",)):
        with pytest.raises(InputError, match="img_size"):
            parsing.parse_img_sizes(bad)


@pytest.mark.parametrize("bad", ["-1", "0,-0.5", "-1:1:0.5", "nan", "inf"])
def test_lam_lists_are_checked_like_one_lam(bad):
    with pytest.raises(InputError, match="λ list.*λ must be finite and >= 0"):
        parsing.parse_lams(bad)


def test_temperatures_round_trip_and_checks():
    assert choices.format_temperatures((1.0, 2.0, math.inf)) == "1,2,inf"
    for temperatures in [(math.inf,), (1.0, math.inf), (0.5, 2.0), (0.1, 1.2345678901234)]:
        assert choices.parse_temperatures(choices.format_temperatures(temperatures)) == temperatures
    assert choices.parse_temperatures(" 1, ∞") == (1.0, math.inf)
    for bad in ("x", "0", "1,-2", ""):
        with pytest.raises(InputError):
            choices.parse_temperatures(bad)


# ---- head sets: one spelling (choices.py), read and written in one place --------------------------------

@pytest.mark.parametrize("text, normal, temperatures", [
    ("1", 1, (math.inf,)),                      # the paper's H=1 here: T = ∞ (the 'four lines')
    ("4", 4, (1.0, 2.0, 4.0, math.inf)),
    ("T1", (1.0,), (1.0,)),                     # the official CSRA code's MHA(num_heads=1)
    ("T1+inf", (1.0, math.inf), (1.0, math.inf)),
    ("t1 + ∞", (1.0, math.inf), (1.0, math.inf)),
    ("T1+2+inf", (1.0, 2.0, math.inf), (1.0, 2.0, math.inf)),
    ("Tinf", (math.inf,), (math.inf,)),
    ("T0.25+7", (0.25, 7.0), (0.25, 7.0)),
])
def test_head_set_spelling_round_trips(text, normal, temperatures):
    from posthoc_csra import choices

    assert choices.parse_head_set(text) == normal and choices.resolve_heads(text) == temperatures
    written = choices.format_head_set(normal)
    assert "," not in written  # never clashes with bench's comma-separated list
    assert choices.parse_head_set(written) == normal and choices.format_head_set(written) == written
    assert choices.parse_temperatures(choices.format_temperatures(temperatures)) == temperatures
    # every spelling of one head set is the same head set: a count, temperatures, their text
    assert choices.resolve_heads(normal) == choices.resolve_heads(list(temperatures)) == temperatures


def test_head_set_text_of_one_and_t1_differ():
    from posthoc_csra import choices

    assert choices.format_head_set(1) == "1" and choices.format_head_set((1.0,)) == "T1"
    assert choices.format_temperatures(choices.resolve_heads(1)) == "inf"
    assert choices.format_temperatures(choices.resolve_heads("T1")) == "1"
    assert choices.describe_temperatures(choices.resolve_heads("1")) == "T={∞}"
    assert choices.format_head_set([1, "inf"]) == "T1+inf" and choices.format_head_set("4") == "4"


@pytest.mark.parametrize("bad", ["3", "x", "T", "T0", "T-1", "Tx", "1,inf", "inf", "", "4.0", True, 3, [], [0],
                                 None, 4.0])
def test_bad_head_sets_say_how_to_write_one(bad):
    from posthoc_csra import choices

    with pytest.raises(InputError, match="head|temperatures"):
        choices.parse_head_set(bad)


def test_bench_head_lists():
    assert parsing.parse_heads("1,4,8,T1,T1+inf") == [1, 4, 8, (1.0,), (1.0, math.inf)]
    assert parsing.parse_heads(" 4 , T1+2+4+inf,t1") == [4, (1.0,)]  # the same temperatures once
    assert parsing.parse_heads([1, (1.0,), "T2+inf"]) == [1, (1.0,), (2.0, math.inf)]
    assert parsing.parse_heads((1, 4)) == [1, 4] and parsing.parse_heads(8) == [8]
    # heads the cache does not store by default (T = 1..7 and ∞) are stored besides, under their own key
    assert parsing.parse_heads("1,T0.5+inf") == [1, (0.5, math.inf)]
    with pytest.raises(InputError, match=r"bad heads 'x'.*in the head list '1,x'"):
        parsing.parse_heads("1,x")


def test_eval_options_head_sets_default_to_the_cli_default():
    from posthoc_csra.choices import DEFAULT_HEADS
    from posthoc_csra.cli.bench import command as bench
    from posthoc_csra.options import EvalOptions

    assert EvalOptions().heads == (DEFAULT_HEADS,) == tuple(parsing.parse_heads(
        next(p for p in bench.params if p.name == "heads").default))
    assert EvalOptions(heads="1,T1").heads == (1, (1.0,)) and EvalOptions(heads=[4, "T1"]).heads == (4, (1.0,))
    assert EvalOptions(heads="T0.5").heads == ((0.5,),)  # stored besides the default heads when bench runs
    for bad in ("3", "T0"):
        with pytest.raises(InputError, match="head"):
            EvalOptions(heads=bad)


def test_help_says_heads_1_is_t_inf_and_how_to_name_t_1():
    helps = {name: " ".join(CliRunner().invoke(main, [name, "--help"], terminal_width=200).output.split())
             for name in ("score", "explain", "export", "bench")}
    for name, text in helps.items():
        assert "1: T={∞}" in text and "1 is T=∞" in text and "four lines" in text, name
        assert "T1 is T=1 alone" in text and "MHA(num_heads=1)" in text, name
    assert "e.g. 1,4,8,T1" in helps["bench"]
    assert "temperatures csra only" in helps["bench"]  # the table's column list has the new column


def test_library_uses_the_same_checks(tmp_path):
    from posthoc_csra.explain import explain_image
    from posthoc_csra.folder import score_folder

    from posthoc_csra.options import LoadOptions, RuleOptions, ScoreTableOptions

    for make, word in [(lambda: RuleOptions(lam=-1), "λ"), (lambda: RuleOptions(lam=math.nan), "λ"),
                       (lambda: RuleOptions(heads=3), "head"), (lambda: RuleOptions(space="sigmoid"), "space"),
                       (lambda: LoadOptions(batch_size=0), "batch_size"), (lambda: LoadOptions(workers=-1), "workers"),
                       (lambda: score_folder(tmp_path, table_options=ScoreTableOptions(topk=0)), "topk"), (lambda: score_folder(tmp_path, img_size=0),
                                                                         "img_size"),
                       (lambda: explain_image(tmp_path / "x.png", topk=0), "topk"),
                       (lambda: explain_image(tmp_path / "x.png", img_size=-5), "img_size")]:
        with pytest.raises(InputError, match=word):
            make()


# ---- on the command line -----------------------------------------------------------------------------

def _one_line_error(args, option, exit_code=2):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # handled: no traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and option in lines[0], result.output
    return lines[0]


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_score_lam_must_be_finite_and_non_negative(tmp_path, value):
    line = _one_line_error(["score", str(tmp_path), "--lam", value], "--lam")
    assert "λ must be finite and >= 0" in line and "defined for λ >= 0" in line


def test_bench_lam_list_must_be_non_negative(tmp_path):
    line = _one_line_error(["bench", "-m", "resnet18", "--random-weights", "-d", f"csv:{tmp_path}/l.csv",
                            "--lam", "-1"], "--lam")
    assert "λ must be finite and >= 0" in line


@pytest.mark.parametrize("command", ["score", "explain", "bench"])
@pytest.mark.parametrize("value", ["-5", "0", "16"])
def test_img_size_at_least_32(tmp_path, command, value):
    args = ["bench", "-d", f"csv:{tmp_path}/l.csv"] if command == "bench" else [command, str(tmp_path / "a.png")]
    line = _one_line_error(args + ["--img-size", value], "--img-size")
    assert ">= 32" in line and "downsample" in line


@pytest.mark.parametrize("command", ["score", "explain"])
def test_topk_at_least_1(tmp_path, command):
    line = _one_line_error([command, str(tmp_path / "a.png"), "--topk", "0"], "--topk")
    assert ">= 1" in line


@pytest.mark.parametrize("command", ["score", "bench"])
@pytest.mark.parametrize("flag, value, rule", [("-b", "0", ">= 1"), ("--batch-size", "-4", ">= 1"),
                                               ("-j", "-1", ">= 0"), ("--workers", "-2", ">= 0")])
def test_batch_size_and_workers(tmp_path, command, flag, value, rule):
    args = ["bench", "-d", f"csv:{tmp_path}/l.csv"] if command == "bench" else ["score", str(tmp_path)]
    option = "--batch-size" if flag in ("-b", "--batch-size") else "--workers"
    line = _one_line_error(args + [flag, value], option)
    assert rule in line


@pytest.mark.parametrize("args, option", [
    (["--temperatures", "0"], "--temperatures"),
    (["--temperatures", "1,x"], "--temperatures"),
    (["--heads", "4", "--temperatures", "1,inf"], "--temperatures"),
    (["--heads", "3"], "--heads"),
    (["--heads", "T0"], "--heads"),
    (["--heads", "1,inf"], "--heads"),
    (["--checkpoint", ".", "--random-weights"], "--random-weights"),
    (["-o", "scores.xlsx"], "--output"),
])
def test_other_bad_score_options(tmp_path, args, option):
    _one_line_error(["score", str(tmp_path), *args], option)


def _one_image(folder):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "a.png")
    return folder


def test_text_file_as_checkpoint_is_one_line_about_the_file(tmp_path):
    _one_image(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("these are my notes, not weights\n")
    line = _one_line_error(["-q", "score", str(tmp_path), "-m", "resnet18", "--checkpoint", str(notes)],
                           str(notes), exit_code=1)
    assert "is a text file" in line


def test_bad_device_is_one_line(tmp_path):
    line = _one_line_error(["score", str(_one_image(tmp_path)), "--device", "gpu"], "device", exit_code=1)
    assert "cpu, cuda" in line


# ---- sizes that cannot fit, top-k above the class count -----------------------------------------------

@pytest.mark.parametrize("command", ["score", "explain", "bench", "export"])
def test_an_img_size_that_cannot_fit_is_refused_before_any_work(tmp_path, command):
    args = {"bench": ["bench", "-d", f"csv:{tmp_path}/l.csv"], "export": ["export", "-o", str(tmp_path / "s.pt2")]}
    line = _one_line_error(args.get(command, [command, str(tmp_path / "a.png")]) + ["--img-size", "100000"],
                           "--img-size")
    assert f"<= {parsing.MAX_IMG_SIZE}" in line and "120 GB" in line


def test_running_out_of_memory_is_one_line_naming_the_options(tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 19267584000 bytes.")
    monkeypatch.setattr("posthoc_csra.scorer.CSRAScorer.__init__", no_memory)
    line = _one_line_error(["-q", "score", str(_one_image(tmp_path)), "-m", "test_resnet", "--random-weights",
                            "--img-size", "4000", "-b", "8"], "--img-size 4000", exit_code=1)
    assert "out of memory" in line and "--batch-size 8" in line and "smaller --img-size" in line


def test_other_runtime_errors_keep_their_traceback():
    from posthoc_csra.prepare import memory_guard

    with pytest.raises(RuntimeError, match="shape mismatch"):
        with memory_guard(448, 8):
            raise RuntimeError("shape mismatch")


def test_topk_above_the_class_count_is_one_warning_line(tmp_path, caplog):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pandas PerformanceWarning (or any other) for a wide top-k table
        with caplog.at_level("WARNING", logger="posthoc_csra"):
            result = CliRunner().invoke(main, ["score", str(_one_image(tmp_path)), "-m", "test_resnet",
                                               "--random-weights", "--topk", "5000", "--workers", "0",
                                               "--no-progress", "-o", str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
    lines = [r.getMessage() for r in caplog.records if "topk" in r.getMessage()]
    assert lines == ["posthoc-csra: --topk 5000 is more than the model's 1000 classes; showing all 1000"]
    import pandas as pd

    columns = pd.read_csv(tmp_path / "s.csv").columns
    assert "top1000_score" in columns and "top1001" not in columns


# ---- inputs are checked before torch is imported -------------------------------------------------------

@pytest.mark.parametrize("make_args, message", [
    (lambda d: ["score", str(d / "nowhere")], "no such file or folder"),
    (lambda d: ["score", str(d / "notes")], "none is an image Pillow can open"),
    (lambda d: ["score", str(d / "notes"), "--card", str(d / "card.json")], "--card"),
    (lambda d: ["explain", str(d / "nowhere.jpg")], "cannot read file"),
    (lambda d: ["explain", str(d / "notes" / "a.png")], "not an image"),
    (lambda d: ["export", "--card", str(d / "card.json"), "-o", str(d / "s.pt2")], "--card"),
])
def test_input_errors_come_before_torch_is_imported(tmp_path, make_args, message):
    import subprocess
    import sys

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.png").write_text("not an image")
    code = ("import sys\nfrom posthoc_csra.cli import main\n"
            f"try:\n    main({make_args(tmp_path)!r}, prog_name='posthoc-csra')\n"
            "except SystemExit as exit:\n    print('exit', exit.code, 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "exit 1 False", result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_errors_are_posthoc_csra_errors():
    from posthoc_csra.heads import UnsupportedModelError
    from posthoc_csra.images import ImageLoadError
    from posthoc_csra.models import WeightsUnavailableError
    from posthoc_csra.folder import NothingScoredError

    for error in (UnsupportedModelError, ImageLoadError, WeightsUnavailableError, NothingScoredError):
        assert issubclass(error, PosthocCsraError), error
