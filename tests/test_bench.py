"""``bench``: option parsers, run_bench and the CLI end to end (evaluation: tests/test_evaluation.py)."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from test_cache import IMG, TinyImages, forward_count  # noqa: F401  (forward_count is a fixture)

from posthoc_csra.bench import expand_models, run_bench
from posthoc_csra.classmaps import class_map_for
from posthoc_csra.evaluation import COLUMNS
from posthoc_csra.options import EvalOptions, LoadOptions, ModelSource
from posthoc_csra.parsing import parse_heads, parse_lams, parse_spaces
from posthoc_csra.cli import main
from posthoc_csra.cli.bench import markdown_table


@pytest.mark.parametrize("text, expected", [
    ("0,0.1,0.3", [0.0, 0.1, 0.3]),
    ("0.3, 0.1,0.1", [0.1, 0.3]),
    ("0:1:0.25", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("0:0.3:0.1", [0.0, 0.1, 0.2, 0.3]),  # end included despite float steps
    ("0.5,0:0.2:0.1", [0.0, 0.1, 0.2, 0.5]),
    ("1:1:0.5", [1.0]),
    ([0.2, 0], [0.0, 0.2]),
])
def test_parse_lams(text, expected):
    assert parse_lams(text) == expected


def test_parse_lams_range_values_are_exact():
    values = parse_lams("0:1:0.1")
    assert len(values) == 11 and values[3] == 0.3 and values[-1] == 1.0 and values[7] == 0.7


@pytest.mark.parametrize("bad", ["", "a", "0,x", "1:0:0.1", "0:1:0", "0:1:-0.1", "0:1", "nan", "inf"])
def test_parse_lams_rejects(bad):
    with pytest.raises(ValueError, match="λ list"):
        parse_lams(bad)


def test_parse_heads_and_spaces():
    assert parse_heads("1,4,8") == [1, 4, 8] and parse_heads([2, 2]) == [2]
    assert parse_spaces("prob, logit") == ["prob", "logit"]
    for bad in ("3", "1,x", ""):
        with pytest.raises(ValueError, match="head"):
            parse_heads(bad)
    with pytest.raises(ValueError):
        parse_spaces("logits")


def test_expand_models(tmp_path, shared):
    manifest = shared / "weights" / "manifest.json"
    assert expand_models("resnet10t") == ["resnet10t"]
    timm_matches = expand_models("tf_efficientnet_lite*")
    assert {"tf_efficientnet_lite0", "tf_efficientnet_lite4"} <= set(timm_matches)
    assert expand_models("tf_efficientnet_lite*", manifest) == [f"tf_efficientnet_lite{i}" for i in range(3)]
    entries = list(json.loads(manifest.read_text()))  # every entry of the shared manifest, in its order
    assert expand_models(None, manifest) == entries and {"tf_efficientnet_lite0", "tf_efficientnet_lite1",
                                                         "tf_efficientnet_lite2", "mobilenetv2_100"} <= set(entries)
    names = tmp_path / "models.txt"
    names.write_text("# zoo\nresnet10t\n\nmobilenetv2_1*  # wildcard\nresnet10t\n")
    assert expand_models([f"@{names}", "resnet10t,test_vit"], manifest) == [
        "resnet10t", "mobilenetv2_100", "test_vit"]
    with pytest.raises(ValueError, match="matches no"):
        expand_models("zzz_no_model_*")
    with pytest.raises(ValueError, match="no models"):
        expand_models([])
    with pytest.raises(FileNotFoundError):
        expand_models(f"@{tmp_path / 'missing.txt'}")


def test_class_map_for_errors():
    assert class_map_for(1000, TinyImages(n=2)) is None
    with pytest.raises(ValueError, match="no class map"):
        class_map_for(1000, TinyImages(n=2, n_classes=5, label_space="custom"))
    with pytest.raises(ValueError, match="no class map"):
        class_map_for(20, TinyImages(n=2, n_classes=80, label_space="coco2014"))


def _imagenet_dir(tmp_path, n=6):
    folder = tmp_path / "inet"
    folder.mkdir()
    for i in range(2, 2 + n):  # val images 2.. all have ReaL labels
        pixels = np.random.default_rng(i).integers(0, 256, (IMG + 8, IMG + 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"ILSVRC2012_val_{i:08d}.png")
    return f"imagenet-real:{folder}"


def test_run_bench_second_run_makes_no_backbone_pass(tmp_path, forward_count):
    spec = _imagenet_dir(tmp_path)
    kw = dict(source=ModelSource(pretrained=False), cache_dir=tmp_path / "cache", img_sizes=[IMG],
              loading=LoadOptions(workers=0, batch_size=4, chunk_size=4, progress=False))
    first = run_bench("test_efficientnet", spec, EvalOptions(lams="0,0.1", heads=1), **kw)
    assert first.attrs["backbone_images"] == 6 and forward_count["n"] > 0 and not first["cached"].any()
    assert list(first.columns[: len(COLUMNS)]) == COLUMNS and first["error"].isna().all()
    forward_count["n"] = 0
    second = run_bench("test_efficientnet", spec, EvalOptions(lams="0:0.5:0.25", heads="1,8"), **kw)
    assert forward_count["n"] == 0 and second.attrs["backbone_images"] == 0 and second["cached"].all()
    csra = second[second["method"] == "csra"]
    assert len(csra) == 3 * 2 * 2
    key = ["space", "heads", "lam"]
    a, b = first[first["method"] == "csra"].set_index(key)["mAP"], csra.set_index(key)["mAP"]
    assert a.loc[("logit", 1, 0.0)] == b.loc[("logit", 1, 0.0)]
    third = run_bench("test_efficientnet", spec, EvalOptions(lams="0"), img_sizes=[IMG, IMG + 8],
                      **{k: v for k, v in kw.items() if k != "img_sizes"})  # a new size is a new key
    assert third.attrs["backbone_images"] == 6
    assert third.groupby("img_size")["cached"].all().to_dict() == {IMG: True, IMG + 8: False}


def test_failing_model_or_dataset_becomes_error_rows(tmp_path):
    spec = _imagenet_dir(tmp_path, n=3)
    (tmp_path / "a.png").write_bytes((tmp_path / "inet" / "ILSVRC2012_val_00000002.png").read_bytes())
    (tmp_path / "labels.csv").write_text("image,labels\na.png,cat|dog\n")
    df = run_bench(["test_efficientnet", "no_such_model_zz"], [spec, f"csv:{tmp_path / 'labels.csv'}"],
                   EvalOptions(lams="0,0.1", spaces="prob"), LoadOptions(workers=0, progress=False),
                   source=ModelSource(pretrained=False), cache_dir=tmp_path / "c", img_sizes=[IMG])
    ok = df[df["error"].isna()]
    assert set(ok["model"]) == {"test_efficientnet"} and set(ok["dataset_spec"]) == {spec}
    assert len(ok[ok["method"] == "csra"]) == 2
    errors = df[df["error"].notna()].set_index(["model", "dataset_spec"])["error"]
    assert len(errors) == 3
    assert "no class map" in errors[("test_efficientnet", f"csv:{tmp_path / 'labels.csv'}")]
    assert all("unknown timm model" in e for e in errors["no_such_model_zz"])
    assert markdown_table(df).splitlines()[0].endswith("| error |")


def test_markdown_table():
    df = pd.DataFrame({"model": ["m"], "lam": [0.1], "mAP": [91.234], "delta": [0.5], "selected": [pd.NA],
                       "error": pd.array([None], dtype="string")})
    assert markdown_table(df) == "| model | lam | selected | mAP | delta |\n|---|---|---|---|---|\n" \
                              "| m | 0.1 |  | 91.23 | +0.50 |\n"


def test_cli_bench_end_to_end_on_real_weights(tmp_path, shared, forward_count):
    images = tmp_path / "images"
    images.mkdir()
    for src in sorted((shared / "data" / "imagenet-val-real" / "images").iterdir())[:24]:
        (images / src.name).symlink_to(src)
    args = ["bench", "--models", "tf_efficientnet_lite0", "--checkpoint", str(shared / "weights" / "manifest.json"),
            "--dataset", f"imagenet-real:{images}", "--space", "logit,prob", "--cache-dir", str(tmp_path / "cache"),
            "--no-progress", "--workers", "1"]
    runner = CliRunner()
    first = runner.invoke(main, args + ["--lam", "0,0.1,0.3", "-o", str(tmp_path / "t.csv.gz")])
    assert first.exit_code == 0, first.output
    assert forward_count["n"] > 0 and "| tf_efficientnet_lite0 |" in first.stdout
    table = pd.read_csv(tmp_path / "t.csv.gz")  # a gzip CSV: the Markdown table beside it is t.md
    assert len(table[table["method"] == "csra"]) == 6 and set(COLUMNS) <= set(table.columns)
    assert table["error"].isna().all()
    assert (table["weights"] == "manifest:tf_efficientnet_lite0").all() and table["exact"].all()
    assert (table["mAP"] > 50).all() and (tmp_path / "t.md").read_text().startswith("| model |")
    forward_count["n"] = 0
    second = runner.invoke(main, args + ["--lam", "0:0.5:0.25", "--heads", "1,8", "--select-on", "val",
                                         "-o", str(tmp_path / "t.parquet"), "--markdown", str(tmp_path / "m.md")])
    assert second.exit_code == 0, second.output
    assert forward_count["n"] == 0 and "backbone pass over 0 image(s)" in second.stderr
    table = pd.read_parquet(tmp_path / "t.parquet")
    assert len(table[table["method"] == "csra"]) == 2 * 2 * 2 * 3 and table["cached"].all()
    assert (tmp_path / "m.md").is_file()
    assert table.groupby(["split", "space", "method"])["selected"].sum().eq(1).all()
    bad = runner.invoke(main, args + ["--lam", "0:1"])
    assert bad.exit_code == 2 and "λ list" in bad.output


def test_cli_bench_every_row_failing_exits_nonzero(tmp_path):
    result = CliRunner().invoke(main, ["bench", "-m", "no_such_model_zz", "-d", _imagenet_dir(tmp_path, 1),
                                       "--cache-dir", str(tmp_path / "c"), "--no-progress"])
    assert result.exit_code == 1 and "unknown timm model" in result.output
    assert COLUMNS[0] == "model"


def test_mosaic_count_only_applies_to_mosaic_specs(small_csv_dataset):
    from posthoc_csra.runner import build_dataset
    labels = small_csv_dataset(8, 2)
    loading = LoadOptions(mosaic_count=3)
    assert len(build_dataset(f"csv:{labels}", 16, loading)) == 8
    assert len(build_dataset(f"mosaic:csv:{labels}", 16, loading)) == 3


def test_full_frame_preprocessing_keeps_the_whole_image():
    """VOC/COCO the paper's way: the whole frame resized to S×S; timm's centre crop would cut the edges off."""
    import timm
    from PIL import Image

    from posthoc_csra.prepare import data_transform

    model = timm.create_model("resnet18", pretrained=False)
    image = Image.new("RGB", (400, 200), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 40, 200))  # a red band on the left edge
    full, config = data_transform(model, 64, full_frame=True)
    cropped, _ = data_transform(model, 64)
    assert config["crop_mode"] == "squash" and config["crop_pct"] == 1.0
    red = full(image)[0, :, :4].mean()
    assert red > 1.5  # normalised red channel of a red pixel
    assert cropped(image)[0, :, :4].mean() < 0  # the crop lost the band
