"""``explain``: crop geometry, class-name matching, per-class maps on the shared pets photo, ViT grids, the CLI."""
import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image
from timm.data import create_transform

from posthoc_csra.cli import main
from posthoc_csra.explain import check_figure_path, crop_box, explain_image, match_classes, render
from posthoc_csra.options import ModelSource, RuleOptions

IMAGENET_LIKE = ["tench, Tinca tinca", "Italian greyhound", "Boston bull, Boston terrier",
                 "crane", "crane", "Irish wolfhound"]


# ---- crop geometry ---------------------------------------------------------------------

def test_crop_box_by_hand_for_the_pets_photo():
    # 512×430, 224 / 0.875 → shorter side 256: 304×256, center crop 224 at (40, 16), back ×512/304, ×430/256.
    box = crop_box((512, 430), {"input_size": (3, 224, 224), "crop_pct": 0.875, "crop_mode": "center"})
    assert box == pytest.approx((40 * 512 / 304, 16 * 430 / 256, 264 * 512 / 304, 240 * 430 / 256))
    assert crop_box((512, 430), {"input_size": (3, 224, 224)}) == pytest.approx(box)  # timm's defaults


@pytest.mark.parametrize("image_size, config", [
    ((512, 430), {"input_size": (3, 224, 224), "crop_pct": 0.875, "crop_mode": "center"}),
    ((300, 500), {"input_size": (3, 96, 96), "crop_pct": 0.9, "crop_mode": "center"}),
    ((333, 250), {"input_size": (3, 96, 128), "crop_pct": 0.9, "crop_mode": "center"}),
    ((500, 300), {"input_size": (3, 160, 160), "crop_pct": 0.95, "crop_mode": "squash"}),
    ((400, 200), {"input_size": (3, 128, 128), "crop_pct": 1.0, "crop_mode": "border"}),
    ((420, 380), {"input_size": (3, 112, 112), "crop_pct": 0.8, "crop_mode": "center", "crop_border_pixels": 12}),
])
def test_crop_box_matches_timm_eval_transform(image_size, config):
    """A white block lands in timm's eval output exactly where crop_box maps it."""
    width, height = image_size
    x0, y0, w, h = int(width * 0.42), int(height * 0.37), 41, 29
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[y0:y0 + h, x0:x0 + w] = 255
    transform = create_transform(**config, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))
    out = transform(Image.fromarray(pixels))[0].numpy()
    out_h, out_w = config["input_size"][1:]
    assert out.shape == (out_h, out_w)
    rows, cols = np.indices(out.shape)
    measured = ((out * cols).sum() / out.sum(), (out * rows).sum() / out.sum())
    left, top, right, bottom = crop_box(image_size, config)
    expected = ((x0 + w / 2 - left) * out_w / (right - left) - 0.5, (y0 + h / 2 - top) * out_h / (bottom - top) - 0.5)
    assert measured == pytest.approx(expected, abs=0.25)


# ---- class names -----------------------------------------------------------------------

def test_match_classes_by_any_synonym_case_insensitive():
    assert match_classes(["boston TERRIER", "Italian greyhound"], IMAGENET_LIKE) == [2, 1]
    assert match_classes(["Boston bull, Boston terrier", "tinca tinca"], IMAGENET_LIKE) == [2, 0]
    assert match_classes(["crane"], IMAGENET_LIKE) == [3, 4]  # a shared name selects every class with it


def test_unknown_class_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown class name 'Italian greyhund'.*'Italian greyhound'"):
        match_classes(["Italian greyhund"], IMAGENET_LIKE)


# ---- the pets photo with EfficientNet-Lite0 -----------------------------------------------

@pytest.fixture(scope="module")
def pets(photos, lite0_weights):
    """At the model's own size with timm's centre crop (--center-crop)."""
    return explain_image(photos / "pets.jpg", "tf_efficientnet_lite0", RuleOptions(lam=0.1, heads=1, space="prob"),
                         source=ModelSource(checkpoint=lite0_weights), full_frame=False, topk=5)


@pytest.fixture(scope="module")
def pets448(photos, lite0_weights):
    """Full frame at 448 px: the setting README recommends for photos of several objects."""
    return explain_image(photos / "pets.jpg", "tf_efficientnet_lite0", RuleOptions(lam=0.1, heads=1, space="prob"),
                         source=ModelSource(checkpoint=lite0_weights), img_size=448, topk=5)


def test_pets_both_breeds_in_top5_ranked_by_csra(pets):
    assert "Italian greyhound" in pets.short_names and "Boston bull" in pets.short_names
    assert pets.grid == (7, 7) and pets.maps.shape == (5, 7, 7)
    assert list(pets.csra) == sorted(pets.csra, reverse=True)
    # heads=1 is T=∞: CSRA = base + λ · max over locations of the map shown
    np.testing.assert_allclose(pets.csra, pets.base + 0.1 * pets.maps.reshape(5, -1).max(1), rtol=1e-5)
    assert pets.attention == {}  # no finite temperature, no attention row


@pytest.mark.parametrize("fixture", ["pets", "pets448"])
def test_pets_each_breed_map_peaks_on_its_own_dog(fixture, request):
    """The greyhound runs on the left of the photo, the Boston bull stands on the right.

    Measured in ``prob`` space (softmax over classes at each location). In ``logit`` space the
    greyhound's map is high on both dogs and its argmax falls on the Boston bull (10.5 vs 10.1).
    Full frame at the model's own 224 px (a 7×7 grid over the whole photo) both maps peak on the
    wrong dog; at 448 px full frame, as with the crop, each peaks on its own.
    """
    pets = request.getfixturevalue(fixture)
    width, _ = pets.image_size
    left, top, right, bottom = pets.crop_box
    for name, side in (("Italian greyhound", "left"), ("Boston bull", "right")):
        x, y = pets.peak(pets.short_names.index(name))
        assert left <= x <= right and top <= y <= bottom
        assert (x < width / 2) == (side == "left"), f"{name} map peaks at x={x:.0f} of {width}"


def test_pets_448_full_frame_sees_the_whole_photo(pets448):
    assert pets448.grid == (14, 14) and pets448.crop_box == pytest.approx((0, 0, 512, 430))
    assert pets448.preprocessing == "448 px, full frame"
    assert "Italian greyhound" in pets448.short_names and "Boston bull" in pets448.short_names


def test_explain_image_computes_render_draws(pets, tmp_path):
    output = render(pets, tmp_path / "pets.png")
    assert output == tmp_path / "pets.png" and [p.name for p in tmp_path.iterdir()] == ["pets.png"]  # no temp left
    with Image.open(output) as figure:
        assert figure.format == "PNG"
        assert 1200 <= figure.width <= 4000 and 300 <= figure.height <= 2000  # five panels in a row
        assert np.asarray(figure.convert("L")).std() > 20  # not blank


# ---- ViT: the grid comes from the model ------------------------------------------------

def test_vit_maps_use_the_models_token_grid(photos, tmp_path):
    result = explain_image(photos / "pets.jpg", "test_vit", RuleOptions(heads=2), source=ModelSource(pretrained=False),
                           img_size=96, topk=1)
    render(result, tmp_path / "vit.png")
    expected = tuple(timm.create_model("test_vit", pretrained=False, img_size=96).patch_embed.grid_size)
    assert expected == (6, 6)  # not the model's default 160 / 16 = 10
    assert result.grid == expected and result.maps.shape == (1, *expected)
    assert set(result.attention) == {1.0}
    np.testing.assert_allclose(result.attention[1.0].reshape(1, -1).sum(1), 1.0, rtol=1e-5)
    weights = torch.softmax(torch.from_numpy(result.maps).flatten(1), dim=1).numpy()
    np.testing.assert_allclose(result.attention[1.0].reshape(1, -1), weights, rtol=1e-5)
    assert result.crop_box == pytest.approx((0, 0, 512, 430))  # full frame (the default): the whole photo
    assert result.preprocessing == "96 px, full frame"
    assert (tmp_path / "vit.png").stat().st_size > 10_000


def test_centre_crop_on_request_sees_only_the_middle_of_the_photo(photos):
    """kite_and_cold.jpg (1352×900): a centre crop drops the people on the left and the kite at the top."""
    cropped = explain_image(photos / "kite_and_cold.jpg", "test_vit", RuleOptions(heads=1),
                            source=ModelSource(pretrained=False), img_size=64, full_frame=False, topk=1)
    whole = explain_image(photos / "kite_and_cold.jpg", "test_vit", RuleOptions(heads=1),
                          source=ModelSource(pretrained=False), img_size=64, topk=1)
    assert cropped.crop_box == pytest.approx(
        crop_box((1352, 900), {"input_size": (3, 64, 64), "crop_pct": 0.95, "crop_mode": "center"}))
    left, top, right, bottom = cropped.crop_box
    assert left > 200 and right < 1152 and (right - left) * (bottom - top) < 0.65 * 1352 * 900
    assert whole.crop_box == pytest.approx((0, 0, 1352, 900))
    assert (cropped.preprocessing, whole.preprocessing) == ("64 px, crop 0.95 (center)", "64 px, full frame")


def test_bad_figure_format_fails_before_any_work(photos, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown figure format"):
        check_figure_path(tmp_path / "maps.txt")

    def no_work(*args, **kwargs):
        raise AssertionError("explain_image ran")
    monkeypatch.setattr("posthoc_csra.explain.explain_image", no_work)
    result = CliRunner().invoke(main, ["explain", str(photos / "pets.jpg"), "-o", str(tmp_path / "maps.txt")])
    assert result.exit_code == 2 and "--output" in result.output and "unknown figure format" in result.output
    assert isinstance(result.exception, SystemExit) and not (tmp_path / "maps.txt").exists()


# ---- CLI -------------------------------------------------------------------------------

def test_cli_explain_named_classes_default_output(photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["explain", str(photos / "pets.jpg"), "-m", "test_vit", "--random-weights",
                                       "--img-size", "64", "-c", "boston TERRIER", "--classes", "Italian greyhound"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 2 and "Boston bull" in result.stdout and "Italian greyhound" in result.stdout
    assert "4×4 locations over the whole 512×430 image [64 px, full frame, prob space" in result.output
    assert "pets_csra.png" in result.output
    with Image.open(tmp_path / "pets_csra.png") as figure:  # default: <image stem>_csra.png in the cwd
        assert figure.format == "PNG"


def test_cli_explain_unknown_class_is_a_clear_error(photos, tmp_path):
    result = CliRunner().invoke(main, ["explain", str(photos / "pets.jpg"), "-m", "test_vit", "--random-weights",
                                       "--img-size", "64", "-c", "Italian greyhund", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert "unknown class name 'Italian greyhund'" in result.output and "'Italian greyhound'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.png").exists()


def test_cli_explain_center_crop_and_the_figure_title_records_the_preprocessing(photos, tmp_path, monkeypatch):
    titles = []
    real_suptitle = __import__("matplotlib.figure", fromlist=["Figure"]).Figure.suptitle

    def suptitle(self, text, **kwargs):
        titles.append(text.replace("\n", " "))
        return real_suptitle(self, text, **kwargs)
    monkeypatch.setattr("matplotlib.figure.Figure.suptitle", suptitle)
    result = CliRunner().invoke(main, ["explain", str(photos / "pets.jpg"), "-m", "test_vit", "--random-weights",
                                       "--img-size", "64", "--center-crop", "-k", "1", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 0, result.output
    assert "over the crop (" in result.output and "[64 px, crop 0.95 (center), prob space" in result.output
    assert len(titles) == 1 and "test_vit at 64 px, crop 0.95 (center)" in titles[0]
