"""`posthoc-csra score` end to end on the real shared photos mixed with every kind of bad file."""
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from posthoc_csra.cli import main

BAD_FILES = ["bad/empty.jpg", "bad/truncated.jpg", "bad/text.png", "bad/bomb.png", "bad/missing.jpg"]
ODD_GOOD_FILES = ["odd/cmyk.jpg", "odd/rgba.png", "odd/palette.png", "odd/gray16.png", "odd/gray.png"]


@pytest.fixture(scope="module")
def mixed_folder(photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    for name in ("parrot.jpg", "pets.jpg", "cat.bmp"):
        (root / name).symlink_to(photos / name)
    (root / "bad").mkdir()
    (root / "odd").mkdir()
    (root / "bad/empty.jpg").write_bytes(b"")
    data = (photos / "parrot.jpg").read_bytes()
    (root / "bad/truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "bad/text.png").write_text("this is not an image")
    Image.new("1", (12000, 12000)).save(root / "bad/bomb.png")  # 144 Mpx > Pillow's 89 Mpx limit
    (root / "bad/missing.jpg").symlink_to(root / "nowhere.jpg")
    parrot = Image.open(photos / "parrot.jpg").convert("RGB").resize((160, 120))
    parrot.convert("CMYK").save(root / "odd/cmyk.jpg")
    rgba = parrot.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "odd/rgba.png")
    parrot.convert("P", palette=Image.Palette.ADAPTIVE).save(root / "odd/palette.png")
    gray = np.asarray(parrot.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray).save(root / "odd/gray16.png")
    parrot.convert("L").save(root / "odd/gray.png")
    return root


def _score(args):
    result = CliRunner().invoke(main, ["-q", "score", *args, "--no-progress", "--workers", "0"])
    return result


@pytest.mark.parametrize("ext", ["csv", "json", "parquet"])
def test_scores_good_images_and_reports_bad_ones(mixed_folder, tmp_path, ext, lite0_weights):
    out = tmp_path / f"scores.{ext}"
    result = _score([str(mixed_folder), "--checkpoint", str(lite0_weights), "--lam", "0.2", "-o", str(out),
                     "--all-scores", "--topk", "3"])
    assert result.exit_code == 0, result.output
    table = {"csv": pd.read_csv, "parquet": pd.read_parquet,
             "json": lambda p: pd.DataFrame(json.loads(p.read_text()))}[ext](out)
    assert list(table["image"]) == sorted(["parrot.jpg", "pets.jpg", "cat.bmp", *BAD_FILES, *ODD_GOOD_FILES])
    errors = table.set_index("image")["error"]
    assert errors[BAD_FILES].notna().all(), errors
    assert errors.drop(BAD_FILES).isna().all(), errors
    assert "0 bytes" in errors["bad/empty.jpg"] and "too large" in errors["bad/bomb.png"]
    assert "scored 8 image(s), 5 failed" in result.output
    rows = table.set_index("image")
    for name in ("parrot.jpg", "odd/cmyk.jpg", "odd/rgba.png", "odd/palette.png"):
        assert rows.loc[name, "top1"] == "macaw", name  # colour conversions keep the image recognisable
    # 16-bit gray is rescaled to the same 8-bit image, not clipped to white
    assert rows.loc["odd/gray16.png", "top1"] == rows.loc["odd/gray.png", "top1"]
    assert np.isclose(rows.loc["odd/gray16.png", "top1_score"], rows.loc["odd/gray.png", "top1_score"], atol=1e-3)
    class_columns = table.columns[table.columns.get_loc("top3_score") + 1:]
    assert len(class_columns) == 1000 and class_columns[88] == "macaw"
    assert np.isclose(rows.loc["parrot.jpg", "macaw"], rows.loc["parrot.jpg", "top1_score"])
    assert rows.loc["bad/text.png", class_columns].isna().all()


def test_terminal_table_and_exit_codes(mixed_folder, lite0_weights, tmp_path):
    result = _score([str(mixed_folder / "parrot.jpg"), "--checkpoint", str(lite0_weights)])
    assert result.exit_code == 0 and "macaw" in result.output
    strict = _score([str(mixed_folder), "--checkpoint", str(lite0_weights), "--strict"])
    assert strict.exit_code != 0 and "--strict" in strict.output
    only_bad = _score([str(mixed_folder / "bad"), "--checkpoint", str(lite0_weights)])
    assert only_bad.exit_code != 0 and "could be scored" in only_bad.output


def test_clear_errors_for_bad_paths_and_options(tmp_path, lite0_weights):
    missing = _score([str(tmp_path / "nope")])
    assert missing.exit_code != 0 and "no such file or folder" in missing.output
    (tmp_path / "empty").mkdir()
    empty = _score([str(tmp_path / "empty")])
    assert empty.exit_code != 0 and "no images found" in empty.output
    fmt = _score([str(tmp_path), "-o", str(tmp_path / "x.xlsx")])
    assert fmt.exit_code != 0 and ".parquet" in fmt.output
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")  # inputs are checked first, then the model name
    unknown = _score([str(tmp_path), "--model", "resnet05"])
    assert unknown.exit_code != 0 and "resnet50" in unknown.output


def test_help_is_instant_and_teaches():
    result = CliRunner().invoke(main, ["score", "--help"])
    assert result.exit_code == 0 and "--space" in result.output and "T={1,2,4,∞}" in result.output


def test_parrot_is_a_macaw_and_lambda_changes_the_pets_ranking(photos, lite0_weights):
    import torch

    from posthoc_csra import CSRAScorer, class_names, load_model
    from posthoc_csra.images import load_rgb
    from posthoc_csra.prepare import data_transform

    model = load_model("tf_efficientnet_lite0", checkpoint=lite0_weights)
    transform, _ = data_transform(model)
    names = class_names(model)
    x = torch.stack([transform(load_rgb(photos / n)) for n in ("parrot.jpg", "pets.jpg")])
    with torch.no_grad():
        base = CSRAScorer(model, lam=0)(x)
        boosted = CSRAScorer(model, lam=0.3, space="prob")(x)
    assert names[int(base[0].argmax())] == "macaw"
    top_base, top_boosted = base[1].topk(8).indices.tolist(), boosted[1].topk(8).indices.tolist()
    for breed in ("Italian greyhound", "Boston bull, Boston terrier"):
        assert names.index(breed) in top_base[:5] and names.index(breed) in top_boosted[:5]
    assert top_base != top_boosted


def test_default_model_runs_offline_without_a_checkpoint(photos, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = _score([str(photos / "parrot.jpg")])
    assert result.exit_code == 0 and "macaw" in result.output


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    Image.new("RGB", (80, 60), (200, 10, 10)).save(root / "red.png")
    Image.new("RGB", (50, 70), (10, 200, 10)).save(root / "green.jpg")
    return root


@pytest.mark.parametrize("ext", ["csv", "json", "parquet"])
def test_every_output_records_its_settings(two_images, tmp_path, ext):
    from posthoc_csra.folder import SETTINGS_COLUMNS
    from posthoc_csra.tables import read_metadata

    out = tmp_path / f"s.{ext}"
    result = _score([str(two_images), "-m", "test_vit", "--random-weights", "--img-size", "64", "--lam", "0.25",
                     "--space", "prob", "--temperatures", "2,inf", "-o", str(out), "--all-scores"])
    assert result.exit_code == 0, result.output
    table = {"csv": pd.read_csv, "parquet": pd.read_parquet,
             "json": lambda p: pd.DataFrame(json.loads(p.read_text()))}[ext](out)
    expected = dict(model="test_vit", weights="random", img_size=64, preprocessing="full frame", space="prob",
                    lam=0.25, temperatures="2,inf")
    assert list(table.columns[:len(SETTINGS_COLUMNS)]) == list(SETTINGS_COLUMNS) == list(expected)
    for column, value in expected.items():
        assert (table[column] == value).all(), column
    assert len(table) == 2 and not list(tmp_path.glob(".*"))  # written atomically: no temp file left
    if ext == "parquet":
        assert read_metadata(out) == expected
    assert "test_vit (random) at 64 px, full frame, prob space, λ=0.25, heads T={2,∞}" in result.output


@pytest.mark.parametrize("flag, mode", [(None, "full frame"), ("--full-frame", "full frame"),
                                        ("--center-crop", "crop 0.875 (center)")])
def test_full_frame_by_default_centre_crop_on_request_and_recorded(photos, lite0_weights, tmp_path, flag, mode):
    import torch

    from posthoc_csra import CSRAScorer, load_model
    from posthoc_csra.prepare import data_transform
    from posthoc_csra.images import load_rgb

    out = tmp_path / "s.csv"
    result = _score([str(photos / "kite_and_cold.jpg"), "--checkpoint", str(lite0_weights), "--all-scores",
                     "-o", str(out), *([flag] if flag else [])])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert (table["preprocessing"] == mode).all() and (table["img_size"] == 224).all()
    assert f"at 224 px, {mode}, prob space" in result.output
    model = load_model("tf_efficientnet_lite0", checkpoint=lite0_weights)
    transform, _ = data_transform(model, full_frame=mode == "full frame")
    with torch.no_grad():
        expected = CSRAScorer(model, lam=0.1, heads=4, space="prob")(transform(load_rgb(photos / "kite_and_cold.jpg"))[None])
    scores = torch.tensor(table.iloc[0, -1000:].to_numpy(dtype="float32"))
    assert torch.allclose(scores, expected[0], atol=1e-5)


def test_readme_first_command_scores_the_photos_full_frame(shared, tmp_path, monkeypatch):
    """README's first command (its score part), run as written from a folder beside ../shared."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    (command,) = re.findall(r"posthoc-csra (score [^&\n]*)", first_block.splitlines()[0])
    args = [a.replace("../shared", str(shared)) for a in shlex.split(command)]
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["-q", *args, "--no-progress", "--workers", "0"])
    assert result.exit_code == 0, result.output
    output = args[args.index("-o") + 1]
    table = pd.read_csv(tmp_path / output)
    assert len(table) == 10 and table["error"].isna().all()
    assert (table["preprocessing"] == "full frame").all()
    top = table.set_index("image")
    assert top.loc["parrot.jpg", "top1"] == "macaw"
    assert {top.loc["pets.jpg", "top1"], top.loc["pets.jpg", "top2"]} == {"Boston bull, Boston terrier",
                                                                        "Italian greyhound"}
