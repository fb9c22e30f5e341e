"""Tests for posthoc_csra.images; every file is generated under tmp_path."""
import io
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from posthoc_csra.errors import InputError, MissingInputError
from posthoc_csra.images import (ImageFiles, ImageLoadError, check_image_folder, collate_images, find_images,
                                 load_rgb, probe_image, readable_extensions, relative_name)


def _save(path, im, fmt=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt, **kw)
    return path


def _jpeg_bytes(size=(64, 48)):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _reason(path):
    with pytest.raises(ImageLoadError) as info:
        load_rgb(path)
    assert isinstance(info.value, InputError)  # a bad input file: the CLI shows it as one line
    assert info.value.path == path and str(path) in str(info.value)
    return info.value.reason


# ---- find_images / relative_name -------------------------------------------------------

def test_find_images_recursive_sorted_and_hidden_skipped(tmp_path):
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    for rel in ["b/z.png", "b/a/c.JPG", "a.jpeg", "b/a.webp", "c/d/e.PNG"]:
        _save(tmp_path / rel, red, "PNG" if rel.lower().endswith("png") else "JPEG")
    _save(tmp_path / ".hidden.png", red)
    _save(tmp_path / ".cache" / "x.png", red)
    _save(tmp_path / "b" / ".secret" / "y.png", red)
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "dir.jpg").mkdir()  # a folder named like an image is not a file
    found = find_images(tmp_path)
    rel = [relative_name(p, tmp_path) for p in found]
    assert rel == ["a.jpeg", "b/a.webp", "b/a/c.JPG", "b/z.png", "c/d/e.PNG"]
    assert all(p.is_file() for p in found)


def test_find_images_extensions_come_from_pillow():
    exts = readable_extensions()
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".webp"} <= exts
    assert all(e == e.lower() and e.startswith(".") for e in exts)
    Image.init()
    assert exts == {e.lower() for e, f in Image.registered_extensions().items() if f in Image.OPEN}


def test_find_images_single_file_and_relative_name(tmp_path):
    f = _save(tmp_path / "one.png", Image.new("RGB", (4, 4)))
    assert find_images(f) == [f]
    assert relative_name(f, f) == "one.png"
    (tmp_path / "sub").mkdir()
    assert relative_name(tmp_path / "sub" / "d" / "x.png", tmp_path) == "sub/d/x.png"
    with pytest.raises(ValueError, match="not under"):
        relative_name(tmp_path / "x.png", tmp_path / "sub")


def test_find_images_missing_and_empty(tmp_path):
    with pytest.raises(MissingInputError, match="no such file or folder"):
        find_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    _save(tmp_path / "empty" / ".hidden.png", Image.new("RGB", (4, 4)))
    with pytest.raises(InputError, match=r"no images found under .*\(extensions Pillow reads: .*\.png"):
        find_images(tmp_path / "empty")


# ---- load_rgb: good inputs --------------------------------------------------------------

def test_rgb_jpeg_and_png(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpeg_bytes())
    im = load_rgb(tmp_path / "a.jpg")
    assert im.mode == "RGB" and im.size == (64, 48)
    png = _save(tmp_path / "a.png", Image.new("RGB", (5, 3), (10, 20, 30)))
    im = load_rgb(png)
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (10, 20, 30)


def test_exif_orientation_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = _save(tmp_path / "rot.jpg", Image.new("RGB", (40, 20), (0, 128, 0)), exif=exif)
    assert load_rgb(path).size == (20, 40)


def test_cmyk_jpeg(tmp_path):
    path = _save(tmp_path / "cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)))
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    r, g, b = load_rgb(path).getpixel((8, 8))
    assert r > 230 and g < 30 and b < 30


def test_rgba_composited_over_white(tmp_path):
    im = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    im.paste((0, 0, 255, 0), (0, 0, 5, 10))  # left half fully transparent blue
    im.putpixel((9, 9), (0, 0, 0, 128))  # half-transparent black
    out = load_rgb(_save(tmp_path / "rgba.png", im))
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((7, 1)) == (255, 0, 0)
    assert all(120 <= c <= 135 for c in out.getpixel((9, 9)))


def test_la_composited_over_white(tmp_path):
    im = Image.new("LA", (4, 4), (0, 0))
    out = load_rgb(_save(tmp_path / "la.png", im))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (6, 6), 1)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.paste(0, (0, 0, 3, 6))  # index 0 (black) is the transparent one
    path = _save(tmp_path / "pal.png", im, transparency=0)
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    out = load_rgb(path)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((5, 0)) == (0, 255, 0)


def test_palette_without_transparency_and_gif(tmp_path):
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    assert load_rgb(_save(tmp_path / "pal.png", im)).getpixel((0, 0)) == (200, 10, 10)
    assert load_rgb(_save(tmp_path / "pal.gif", im)).getpixel((0, 0)) == (200, 10, 10)


def test_grayscale_and_bilevel(tmp_path):
    out = load_rgb(_save(tmp_path / "g.png", Image.new("L", (4, 4), 77)))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (77, 77, 77)
    bw = Image.new("1", (4, 4), 1)
    bw.putpixel((0, 0), 0)
    out = load_rgb(_save(tmp_path / "bw.png", bw))
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 1)) == (255, 255, 255)


def test_16bit_grayscale_png_rescaled_not_white(tmp_path):
    values = np.array([[0, 256, 32768, 65535], [1000, 20000, 40000, 60000]], dtype=np.uint16)
    path = _save(tmp_path / "g16.png", Image.fromarray(values))
    with Image.open(path) as raw:
        assert raw.mode in ("I;16", "I;16B", "I")
        assert raw.convert("L").getpixel((1, 1)) == 255  # the naive way clips to white
    out = np.asarray(load_rgb(path))
    assert out.shape == (2, 4, 3) and not (out == 255).all()
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 1 and out[0, 3, 0] == 255
    assert abs(int(out[0, 2, 0]) - 128) <= 1
    assert np.array_equal(out[..., 0], (values >> 8).astype(np.uint8))


def test_16bit_big_endian_and_mode_i(tmp_path):
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    big = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    out = np.asarray(load_rgb(_save(tmp_path / "b16.tif", big)))[0, :, 0]
    assert out.tolist() == [0, 128, 255]
    mode_i = Image.fromarray(values.astype(np.int32), mode="I")
    out = np.asarray(load_rgb(_save(tmp_path / "i.tif", mode_i)))[0, :, 0]
    assert out.tolist() == [0, 128, 255]


def test_float_image_min_max(tmp_path):
    values = np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)
    path = _save(tmp_path / "f.tif", Image.fromarray(values, mode="F"))
    out = np.asarray(load_rgb(path))[0, :, 0]
    assert out.tolist() == [0, 128, 255]


# ---- load_rgb: bad inputs ---------------------------------------------------------------

def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert _reason(tmp_path / "empty.jpg") == "empty file (0 bytes)"


def test_truncated_jpeg(tmp_path):
    data = _jpeg_bytes((128, 96))
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    assert _reason(tmp_path / "half.jpg").startswith("truncated image: ")


def test_text_named_png(tmp_path):
    (tmp_path / "fake.png").write_text("this is not a picture\n" * 10)
    assert _reason(tmp_path / "fake.png") == "not an image: cannot identify image file"


def test_broken_symlink_is_found_and_fails(tmp_path):
    _save(tmp_path / "ok.png", Image.new("RGB", (4, 4)))
    (tmp_path / "bad.jpg").symlink_to(tmp_path / "missing.jpg")
    assert [p.name for p in find_images(tmp_path)] == ["bad.jpg", "ok.png"]
    reason = _reason(tmp_path / "bad.jpg")
    assert reason.startswith("cannot read file: ") and "broken symlink" in reason


def test_directory_path_fails(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    assert _reason(tmp_path / "x.jpg").startswith("cannot read file: ")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="running as root: chmod 000 does not block reading "
                           "(unreadable files are covered by the broken-symlink test)")
def test_permission_denied(tmp_path):
    path = _save(tmp_path / "locked.png", Image.new("RGB", (4, 4)))
    path.chmod(0)
    try:
        assert _reason(path) == "cannot read file: Permission denied"
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("side, kind", [(40, "warning band (1x..2x)"), (100, "error (>2x)")])
def test_decompression_bomb_is_an_error(tmp_path, monkeypatch, side, kind):
    path = _save(tmp_path / f"big{side}.png", Image.new("RGB", (side, side)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    filters = list(warnings.filters)
    reason = _reason(path)
    assert reason == (f"image too large: {side}x{side} pixels exceeds Pillow's "
                      f"decompression-bomb limit (MAX_IMAGE_PIXELS=1000)"), kind
    assert warnings.filters == filters  # no global change to warning filters
    small = _save(tmp_path / "small.png", Image.new("RGB", (30, 30)))
    assert load_rgb(small).size == (30, 30)


# ---- Dataset + collate ------------------------------------------------------------------

def _mixed_folder(root):
    (root / "sub").mkdir(parents=True)
    _save(root / "a.png", Image.new("RGBA", (50, 40), (255, 0, 0, 255)))
    (root / "b.jpg").write_bytes(b"")
    (root / "sub" / "c.jpg").write_bytes(_jpeg_bytes((70, 30)))
    (root / "sub" / "d.png").write_text("not an image")
    data = _jpeg_bytes((128, 96))
    (root / "sub" / "e.jpg").write_bytes(data[: len(data) // 2])
    _save(root / "sub" / "f.png", Image.fromarray(np.full((20, 20), 65535, np.uint16)))
    return find_images(root)


_TRANSFORM = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])


def test_dataset_items_and_default_transform(tmp_path):
    paths = _mixed_folder(tmp_path)
    ds = ImageFiles(paths, tmp_path, None)
    assert ds.names == ["a.png", "b.jpg", "sub/c.jpg", "sub/d.png", "sub/e.jpg", "sub/f.png"]
    item = ds[0]
    assert item["index"] == 0 and item["error"] is None
    assert item["image"].shape == (3, 40, 50) and item["image"].dtype == torch.float32
    assert ds[1] == {"index": 1, "image": None, "error": "empty file (0 bytes)"}
    bad = ImageFiles(paths[:1], tmp_path, lambda im: 1 / 0)[0]
    assert bad["image"] is None and bad["error"].startswith("transform failed (ZeroDivisionError)")


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_mixed_good_and_bad(tmp_path, workers):
    paths = _mixed_folder(tmp_path)
    ds = ImageFiles(paths, tmp_path, _TRANSFORM)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers,
                                         collate_fn=collate_images)
    good, failures, shapes = [], [], []
    for images, indices, fails in loader:
        assert images is None or images.shape == (len(indices), 3, 32, 32)
        shapes.append(None if images is None else tuple(images.shape))
        good += indices
        failures += fails
    assert good == [0, 2, 5]
    assert [i for i, _ in failures] == [1, 3, 4]
    errors = dict(failures)
    assert errors[1] == "empty file (0 bytes)"
    assert errors[3] == "not an image: cannot identify image file"
    assert errors[4].startswith("truncated image: ")
    assert shapes == [(2, 3, 32, 32), (1, 3, 32, 32)]


def test_collate_all_bad_and_all_good():
    assert collate_images([{"index": 3, "image": None, "error": "boom"}]) == (None, [], [(3, "boom")])
    images, idx, fails = collate_images([{"index": i, "image": torch.zeros(3, 2, 2), "error": None}
                                         for i in (5, 6)])
    assert images.shape == (2, 3, 2, 2) and idx == [5, 6] and fails == []


# ---- checks before any model is loaded ---------------------------------------------------

def test_probe_reads_headers_only_and_gives_load_rgbs_reasons(tmp_path):
    paths = _mixed_folder(tmp_path)
    reasons = {relative_name(p, tmp_path): probe_image(p) for p in paths}
    assert reasons == {"a.png": None, "b.jpg": "empty file (0 bytes)", "sub/c.jpg": None,
                       "sub/d.png": "not an image: cannot identify image file",
                       "sub/e.jpg": None,  # a truncated file opens; it fails when decoded (an error row)
                       "sub/f.png": None}
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert probe_image(tmp_path / "gone.png").startswith("cannot read file")


def test_a_folder_with_nothing_to_score_fails_before_a_model_loads(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "readme.txt").write_text("not even an image extension")
    with pytest.raises(InputError, match=r"none of the 2 file\(s\) under .* could be scored: none is an image "
                                         r"Pillow can open \(first: empty.jpg: empty file \(0 bytes\)\)"):
        check_image_folder(tmp_path)
    _save(tmp_path / "z.png", Image.new("RGB", (8, 8)))
    assert [p.name for p in check_image_folder(tmp_path)] == ["empty.jpg", "notes.png", "z.png"]


def test_importing_images_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, posthoc_csra.images; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
