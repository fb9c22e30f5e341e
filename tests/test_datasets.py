import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from posthoc_csra.datasets import (DATASETS, VOC_CLASSES, Mosaic, load_class_map, map_scores,
                                   parse_dataset, split_indices)


def _image(path, color=(200, 30, 30), size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


# ------------------------------------------------------------------ VOC 2007
def _voc_xml(objects):
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>"
                   for n, d in objects)
    return f"<annotation><filename>x.jpg</filename>{objs}</annotation>"


VOC_IMAGES = {
    "000001": [("dog", 0), ("person", 1)],        # dog +, person ignore
    "000002": [("cat", 1), ("cat", 0)],           # cat + (a non-difficult one exists)
    "000003": [("car", 1), ("car", 1)],           # car ignore only
    "000004": [],                                 # nothing
}


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2007"
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    for (image, objs), c in zip(VOC_IMAGES.items(), colors):
        _image(root / "JPEGImages" / f"{image}.jpg", c, size=(50, 40))
        (root / "Annotations").mkdir(exist_ok=True)
        (root / "Annotations" / f"{image}.xml").write_text(_voc_xml(objs))
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    main.joinpath("test.txt").write_text("000001\n000002\n000003\n000004\n")
    main.joinpath("trainval.txt").write_text("000002\n")
    return tmp_path / "VOCdevkit"


def test_voc2007_labels_and_ignore(voc):
    ds = parse_dataset(f"voc2007:{voc}")
    assert ds.classes == VOC_CLASSES and ds.label_space == "voc2007" and len(ds) == 4
    t, g = ds.targets(), ds.ignore_mask()
    assert t.dtype == np.uint8 and g.dtype == bool and t.shape == g.shape == (4, 20)
    c = VOC_CLASSES.index
    assert t[0, c("dog")] == 1 and not g[0, c("dog")]
    assert t[0, c("person")] == 0 and g[0, c("person")]
    assert t[1, c("cat")] == 1 and not g[1, c("cat")]
    assert t[2, c("car")] == 0 and g[2, c("car")]
    assert t[3].sum() == 0 and not g[3].any()
    assert t.sum() == 2 and g.sum() == 2
    image, target, ignore = ds[0]
    assert image.mode == "RGB" and image.size == (50, 40)
    assert np.array_equal(target, t[0]) and np.array_equal(ignore, g[0])
    assert ds.image_id(0) == "JPEGImages/000001.jpg"
    # VOCdevkit/VOC2007 itself is accepted too, with the same data
    same = parse_dataset(f"voc2007:{voc / 'VOC2007'}")
    assert np.array_equal(same.targets(), t) and same.fingerprint() == ds.fingerprint()
    other = parse_dataset(f"voc2007:{voc}@trainval")
    assert len(other) == 1 and other.image_id(0) == "JPEGImages/000002.jpg"
    assert other.fingerprint() != ds.fingerprint()


def test_fingerprint_tracks_files_and_labels(voc):
    spec = f"voc2007:{voc}"
    fp = parse_dataset(spec).fingerprint()
    assert parse_dataset(spec).fingerprint() == fp
    jpg = voc / "VOC2007" / "JPEGImages" / "000004.jpg"
    st = os.stat(jpg)
    os.utime(jpg, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    fp2 = parse_dataset(spec).fingerprint()
    assert fp2 != fp
    (voc / "VOC2007" / "Annotations" / "000004.xml").write_text(_voc_xml([("bus", 0)]))
    assert parse_dataset(spec).fingerprint() != fp2


def test_wrong_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/test.txt.*VOCdevkit layout"):
        parse_dataset(f"voc2007:{tmp_path}")
    with pytest.raises(FileNotFoundError, match=r"not a folder"):
        parse_dataset(f"voc2007:{tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match=r"annotations/instances_val2014.json"):
        parse_dataset(f"coco2014:{tmp_path}")
    with pytest.raises(FileNotFoundError, match=r"ILSVRC2012_val_XXXXXXXX"):
        parse_dataset(f"imagenet-real:{tmp_path}")
    with pytest.raises(FileNotFoundError, match=r"header"):
        parse_dataset(f"csv:{tmp_path / 'missing.csv'}")


def test_unknown_prefix_lists_known():
    for spec in ("imagenet:/data", "no-colon-at-all"):
        with pytest.raises(ValueError, match="known prefixes") as info:
            parse_dataset(spec)
        for prefix in DATASETS:
            assert f"{prefix}:" in str(info.value)
    assert {"imagenet-real", "voc2007", "coco2014", "csv", "mosaic", "mosaic2",
            "mosaic3"} <= set(DATASETS)


# ------------------------------------------------------------------ COCO 2014
def test_coco2014(tmp_path):
    root = tmp_path / "coco"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _image(root / "val2014" / name)
    cats = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    images = [{"id": 7, "file_name": "b.jpg"}, {"id": 5, "file_name": "a.jpg"},
              {"id": 9, "file_name": "c.jpg"}]
    anns = [{"image_id": 5, "category_id": 18, "iscrowd": 0},
            {"image_id": 5, "category_id": 18, "iscrowd": 0},
            {"image_id": 7, "category_id": 1, "iscrowd": 1},   # crowd counts as positive
            {"image_id": 7, "category_id": 3, "iscrowd": 0}]   # c.jpg: no annotations, kept
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2014.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    ds = parse_dataset(f"coco2014:{root}")
    assert ds.classes == ["person", "car", "dog"] and ds.label_space == "coco2014"
    assert [ds.image_id(i) for i in range(len(ds))] == [
        "val2014/a.jpg", "val2014/b.jpg", "val2014/c.jpg"]
    assert ds.targets().tolist() == [[0, 0, 1], [1, 1, 0], [0, 0, 0]]
    assert not ds.ignore_mask().any()
    assert ds[2][0].mode == "RGB"
    os.remove(root / "val2014" / "c.jpg")
    with pytest.raises(FileNotFoundError, match="c.jpg"):
        parse_dataset(f"coco2014:{root}")


# ------------------------------------------------------------------ CSV
@pytest.fixture
def csv_dir(tmp_path):
    for i, name in enumerate(["x.png", "sub/y.jpg", "z.png", "w.png"]):
        _image(tmp_path / name, (40 * i, 255 - 40 * i, 90))
    (tmp_path / "labels.csv").write_text(
        "image,labels\nx.png,cat|dog\nsub/y.jpg,dog; bird\nz.png,\nw.png,cat\n")
    return tmp_path


def test_csv_sorted_union_and_separators(csv_dir):
    ds = parse_dataset(f"csv:{csv_dir / 'labels.csv'}")
    assert ds.classes == ["bird", "cat", "dog"] and ds.label_space == "custom"
    assert ds.targets().tolist() == [[0, 1, 1], [1, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert ds.image_id(1) == "sub/y.jpg" and ds[1][0].mode == "RGB"
    assert not ds.ignore_mask().any()
    from posthoc_csra.images import ImageLoadError
    (csv_dir / "z.png").write_bytes(b"not an image")  # decoding goes through load_rgb
    with pytest.raises(ImageLoadError):
        ds[2]


def test_csv_classes_file_and_unknown_label(csv_dir):
    classes = csv_dir / "classes.txt"
    classes.write_text("dog\ncat\nbird\nfish\n")
    ds = parse_dataset(f"csv:{csv_dir / 'labels.csv'}", classes_file=classes)
    assert ds.classes == ["dog", "cat", "bird", "fish"]
    assert ds.targets().tolist() == [[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]]
    classes.write_text("dog\ncat\n")
    with pytest.raises(ValueError, match=r"row 3 .*'bird'"):
        parse_dataset(f"csv:{csv_dir / 'labels.csv'}", classes_file=classes)


def test_csv_requires_header(csv_dir):
    (csv_dir / "bad.csv").write_text("x.png,cat\n")
    with pytest.raises(ValueError, match="header"):
        parse_dataset(f"csv:{csv_dir / 'bad.csv'}")
    (csv_dir / "missing.csv").write_text("image,labels\nnope.png,cat\n")
    with pytest.raises(FileNotFoundError, match="row 2"):
        parse_dataset(f"csv:{csv_dir / 'missing.csv'}")


# ------------------------------------------------------------------ imagenet-real
def _real():
    import timm
    from pathlib import Path
    path = Path(timm.__file__).parent / "data" / "_info" / "imagenet_real_labels.json"
    return json.loads(path.read_text())


def test_imagenet_real_synthetic(tmp_path):
    real = _real()
    multi = next(n for n in range(1, 50001) if len(real[n - 1]) > 1)
    single = next(n for n in range(1, 50001) if len(real[n - 1]) == 1)
    empty = [n for n in range(1, 50001) if not real[n - 1]][:2]
    _image(tmp_path / f"ILSVRC2012_val_{multi:08d}.JPEG")
    _image(tmp_path / "deep" / "er" / f"ILSVRC2012_val_{single:08d}.png")
    for n in empty:
        _image(tmp_path / f"ILSVRC2012_val_{n:08d}.jpg")
    _image(tmp_path / "not_a_val_image.jpg")
    ds = parse_dataset(f"imagenet-real:{tmp_path}")
    assert len(ds) == 2 and ds.n_dropped == 2 and ds.label_space == "imagenet-1k"
    assert len(ds.classes) == 1000 and ds.classes[0].startswith("tench")
    got = {ds.image_id(i): sorted(np.flatnonzero(ds.targets()[i]).tolist()) for i in range(2)}
    assert got == {f"ILSVRC2012_val_{multi:08d}.JPEG": sorted(real[multi - 1]),
                   f"deep/er/ILSVRC2012_val_{single:08d}.png": sorted(real[single - 1])}
    image, target, ignore = ds[0]
    assert image.mode == "RGB" and target.shape == (1000,) and not ignore.any()


# ------------------------------------------------------------------ mosaics
def test_mosaic_determinism_and_union(csv_dir):
    spec = f"mosaic:csv:{csv_dir / 'labels.csv'}"
    with pytest.raises(ValueError, match="size is required"):
        parse_dataset(spec)
    a = parse_dataset(spec, size=64, seed=3, count=5)
    b = parse_dataset(spec, size=64, seed=3, count=5)
    assert isinstance(a, Mosaic) and len(a) == 5 and a.k == 2
    assert len(parse_dataset(spec, size=64)) == 1  # default count: 4 images // 4 tiles
    inner = a.inner.targets()
    for i in range(5):
        assert a.tiles(i) == b.tiles(i) and len(set(a.tiles(i))) == 4
        assert np.array_equal(a.targets()[i], inner[a.tiles(i)].max(axis=0))
    im_a, t_a, _ = a[2]
    im_b, t_b, _ = b[2]
    assert im_a.size == (64, 64) and np.array_equal(np.asarray(im_a), np.asarray(im_b))
    assert a.fingerprint() == b.fingerprint()
    # each 32x32 quadrant shows its (solid-colour) tile
    px = np.asarray(im_a).astype(int)
    for slot, j in enumerate(a.tiles(2)):
        tile = np.asarray(a.inner[j][0]).astype(int)[0, 0]
        r, c = divmod(slot, 2)
        assert np.abs(px[32 * r + 16, 32 * c + 16] - tile).max() <= 3
    c = parse_dataset(spec, size=64, seed=4, count=5)
    assert c.fingerprint() != a.fingerprint()
    assert any(c.tiles(i) != a.tiles(i) for i in range(5))
    assert parse_dataset(spec, size=96, seed=3, count=5).fingerprint() != a.fingerprint()


def test_mosaic3_and_ignore(voc, tmp_path):
    m = parse_dataset(f"mosaic2:voc2007:{voc}", size=50, count=1)
    assert sorted(m.tiles(0)) == [0, 1, 2, 3] and m[0][0].size == (50, 50)
    t, g = m.targets()[0], m.ignore_mask()[0]
    c = VOC_CLASSES.index
    # person: only difficult -> ignore; car: only difficult -> ignore; dog/cat positive
    assert t[c("dog")] == t[c("cat")] == 1 and t.sum() == 2
    assert g[c("person")] and g[c("car")] and g.sum() == 2
    for i in range(9):
        _image(tmp_path / "nine" / f"{i}.png", (25 * i, 0, 0))
    (tmp_path / "nine" / "l.csv").write_text(
        "image,labels\n" + "".join(f"{i}.png,c{i}\n" for i in range(9)))
    m3 = parse_dataset(f"mosaic3:csv:{tmp_path / 'nine' / 'l.csv'}", size=60)
    assert len(m3) == 1 and m3.k == 3 and m3[0][0].size == (60, 60)
    assert m3.targets().tolist() == [[1] * 9]
    with pytest.raises(ValueError, match="count applies to mosaic"):
        parse_dataset(f"voc2007:{voc}", count=3)


# ------------------------------------------------------------------ split
def test_split_indices():
    val, test = split_indices(101, 0.3, seed=5)
    assert len(val) == 30 and len(test) == 71 and not set(val) & set(test)
    assert sorted(np.concatenate([val, test]).tolist()) == list(range(101))
    v2, t2 = split_indices(101, 0.3, seed=5)
    assert np.array_equal(val, v2) and np.array_equal(test, t2)
    assert not np.array_equal(split_indices(101, 0.3, seed=6)[0], val)
    with pytest.raises(ValueError):
        split_indices(10, 1.5)


# ------------------------------------------------------------------ class maps
def test_class_map_sanity():
    from timm.data import ImageNetInfo
    names = ImageNetInfo().label_descriptions()
    voc = load_class_map("voc2007")
    assert voc.classes == VOC_CLASSES and voc.version == "1"
    dog = voc.members[VOC_CLASSES.index("dog")]
    assert len(dog) > 100 and names.index("golden retriever") in dog
    assert not any(n.startswith(("timber wolf", "red fox")) for n in (names[i] for i in dog))
    cat = voc.members[VOC_CLASSES.index("cat")]
    assert names.index("tabby, tabby cat") in cat and not any("lion" in names[i] for i in cat)
    assert voc.unmapped == ["person"] and voc.members[VOC_CLASSES.index("person")] == []
    coco = load_class_map("coco2014")
    assert len(coco.classes) == 80 and coco.classes[:3] == ["person", "bicycle", "car"]
    assert "person" in coco.unmapped and "kite" in coco.unmapped  # ImageNet 'kite' is a bird
    assert sum(bool(m) for m in coco.members) == 80 - len(coco.unmapped)
    with pytest.raises(ValueError, match="voc2007"):
        load_class_map("imagenet-21k")
    r = coco.reorder(["dog", "person"])
    assert r.classes == ["dog", "person"] and r.unmapped == ["person"]


def test_map_scores_pooling():
    cmap = load_class_map("voc2007")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 1000))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    dog = cmap.members[VOC_CLASSES.index("dog")]
    mx, sm = map_scores(probs, cmap, "max"), map_scores(probs, cmap, pool="sum")
    assert mx.shape == sm.shape == (3, 20)
    np.testing.assert_allclose(mx[:, VOC_CLASSES.index("dog")], probs[:, dog].max(1))
    np.testing.assert_allclose(sm[:, VOC_CLASSES.index("dog")], probs[:, dog].sum(1))
    person = VOC_CLASSES.index("person")
    assert np.isnan(mx[:, person]).all() and np.isnan(sm[:, person]).all()
    assert np.isfinite(np.delete(mx, person, axis=1)).all()
    t = map_scores(torch.from_numpy(probs).float(), cmap, "sum")
    assert isinstance(t, torch.Tensor) and t.shape == (3, 20)
    np.testing.assert_allclose(t.numpy(), sm, rtol=1e-5, equal_nan=True)
    with pytest.raises(ValueError, match="probabilities"):
        map_scores(logits, cmap)
    with pytest.raises(ValueError, match="pool"):
        map_scores(probs, cmap, "mean")


# ------------------------------------------------------------------ real data
def test_shared_imagenet_real(shared):
    root = shared / "data" / "imagenet-val-real" / "images"
    ds = parse_dataset(f"imagenet-real:{root}")
    assert len(ds) == 509 and ds.n_dropped == 21
    assert len(ds) + ds.n_dropped == len(list(root.iterdir())) == 530
    assert (ds.targets().sum(1) > 1).sum() == 59 and (ds.targets().sum(1) >= 1).all()
    real = _real()
    for i in (0, 100, 508):
        n = int(ds.image_id(i).split("_")[-1].split(".")[0])
        assert sorted(np.flatnonzero(ds.targets()[i]).tolist()) == sorted(real[n - 1])
    image, _, _ = ds[0]
    assert image.mode == "RGB"
    m = parse_dataset(f"mosaic:imagenet-real:{root}", size=224, seed=1)
    assert len(m) == 509 // 4 and m[0][0].size == (224, 224)


def test_mosaic_val_and_test_share_no_tile(small_csv_dataset):
    from posthoc_csra.datasets import dataset_split
    mosaic = parse_dataset(f"mosaic:csv:{small_csv_dataset(20, 3)}", size=16, count=10)
    val, test = dataset_split(mosaic, 0.5, 0)
    assert len(val) == len(test) == 5
    val_tiles = {j for i in val for j in mosaic.tiles(i)}
    test_tiles = {j for i in test for j in mosaic.tiles(i)}
    assert not val_tiles & test_tiles
    with pytest.raises(ValueError, match="halves"):
        dataset_split(mosaic, 0.3, 0)
