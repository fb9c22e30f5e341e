import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from posthoc_csra.classmaps import CLASS_MAP_SPACES, class_map_for, pool_members
from posthoc_csra.datasets import (DATASETS, VOC_CLASSES, DatasetWarning, Mosaic, MultiLabelDataset, Part, Subset,
                                   dataset_kind, dataset_options, dataset_split, is_size_dependent,
                                   load_class_map, map_scores, parse_dataset, partition, split_indices)
from posthoc_csra.errors import InputError, MissingInputError


def _touch_then_rewrite(path, fingerprint):
    """A new mtime keeps ``fingerprint()`` (it hashes content); new bytes change it. Returns the new value."""
    st = os.stat(path)
    before = fingerprint()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert fingerprint() == before
    with open(path, "ab") as f:
        f.write(b"\0")  # a trailing byte: the image still decodes, its content differs
    after = fingerprint()
    assert after != before
    return after


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
VOC_SPLITS = {"test": ["000001", "000002", "000003", "000004"], "trainval": ["000002"]}


def _label_value(objects, cls):
    """The devkit's label-file value: 1 present, 0 only difficult objects, -1 absent."""
    flags = [int(d) for n, d in objects if n == cls]
    return -1 if not flags else (0 if all(flags) else 1)


def _write_voc(root, *, xml=True, label_files=False):
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for (image, objs), c in zip(VOC_IMAGES.items(), colors):
        _image(root / "JPEGImages" / f"{image}.jpg", c, size=(50, 40))
        if xml:
            (root / "Annotations").mkdir(exist_ok=True)
            (root / "Annotations" / f"{image}.xml").write_text(_voc_xml(objs))
    for split, ids in VOC_SPLITS.items():
        main.joinpath(f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        if label_files:  # the devkit's format: "000001 -1", "000002  1"
            for cls in VOC_CLASSES:
                main.joinpath(f"{cls}_{split}.txt").write_text("".join(
                    f"{i} {_label_value(VOC_IMAGES[i], cls):2d}\n" for i in ids))
    return root


@pytest.fixture
def voc(tmp_path):
    """VOCdevkit/VOC2007 with XML annotations only; returns the VOCdevkit folder."""
    _write_voc(tmp_path / "VOCdevkit" / "VOC2007")
    return tmp_path / "VOCdevkit"


@pytest.fixture
def voc_both(tmp_path):
    """VOCdevkit/VOC2007 with both the per-class label files and the XML annotations."""
    return _write_voc(tmp_path / "both" / "VOCdevkit" / "VOC2007", label_files=True)


def test_voc2007_labels_and_ignore(voc):
    ds = parse_dataset(f"voc2007:{voc}")
    assert ds.classes == VOC_CLASSES and ds.label_space == "voc2007" and len(ds) == 4
    assert ds.short_name == "voc2007@test" and ds.name == f"voc2007:{voc}" and ds.full_frame
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
    assert other.fingerprint() != ds.fingerprint() and other.short_name == "voc2007@trainval"


def test_voc2007_label_files_and_xml_agree(voc_both):
    """The label-file reader and the XML reader give the same targets and ignore mask."""
    for split in VOC_SPLITS:
        spec = f"voc2007:{voc_both.parent.parent}@{split}"  # a folder holding VOCdevkit/VOC2007
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # they agree: no warning
            both = parse_dataset(spec)
        shutil.move(voc_both / "Annotations", voc_both.parent / "Annotations.off")
        from_files = parse_dataset(spec)
        shutil.move(voc_both.parent / "Annotations.off", voc_both / "Annotations")
        label_files = sorted((voc_both / "ImageSets" / "Main").glob(f"*_{split}.txt"))
        assert len(label_files) == 20
        for f in label_files:
            f.rename(f.with_suffix(".off"))
        from_xml = parse_dataset(spec)
        for f in label_files:
            f.with_suffix(".off").rename(f)
        assert len(from_files) == len(VOC_SPLITS[split]) and from_files.targets().any()
        for ds in (both, from_xml):
            assert np.array_equal(ds.targets(), from_files.targets())
            assert np.array_equal(ds.ignore_mask(), from_files.ignore_mask())
            assert ds.fingerprint() == from_files.fingerprint()
    expected = parse_dataset(f"voc2007:{voc_both}")  # the label files say what the XML test above checks
    assert expected.ignore_mask()[0, VOC_CLASSES.index("person")] and expected.targets()[0, VOC_CLASSES.index("dog")]


def test_voc2007_label_files_win_over_disagreeing_xml(voc_both):
    bus = voc_both / "ImageSets" / "Main" / "bus_test.txt"
    bus.write_text(bus.read_text().replace("000004 -1", "000004  1"))
    (voc_both / "Annotations" / "000003.xml").write_text(_voc_xml([("car", 0)]))  # car: 0 -> 1 in XML
    with pytest.warns(DatasetWarning, match=r"disagree on 2 \(image, class\) entries of split test; "
                                            r"first: image 000003, car: label file 0 .*XML 1"):
        ds = parse_dataset(f"voc2007:{voc_both}")
    c = VOC_CLASSES.index
    assert ds.targets()[3, c("bus")] == 1  # from the label file
    assert ds.targets()[2, c("car")] == 0 and ds.ignore_mask()[2, c("car")]


def test_fingerprint_tracks_files_and_labels(voc):
    spec = f"voc2007:{voc}"
    fp = parse_dataset(spec).fingerprint()
    assert parse_dataset(spec).fingerprint() == fp
    jpg = voc / "VOC2007" / "JPEGImages" / "000004.jpg"
    fp2 = _touch_then_rewrite(jpg, lambda: parse_dataset(spec).fingerprint())
    assert fp2 != fp
    (voc / "VOC2007" / "Annotations" / "000004.xml").write_text(_voc_xml([("bus", 0)]))
    assert parse_dataset(spec).fingerprint() != fp2


def test_wrong_layout_errors(tmp_path):
    with pytest.raises(MissingInputError, match=r"no ImageSets/Main folder.*VOCdevkit layout"):
        parse_dataset(f"voc2007:{tmp_path}")
    with pytest.raises(MissingInputError, match=r"not a folder"):
        parse_dataset(f"voc2007:{tmp_path / 'nope'}")
    with pytest.raises(MissingInputError, match=r"annotations/instances_val2014.json"):
        parse_dataset(f"coco2014:{tmp_path}")
    with pytest.raises(MissingInputError, match=r"ILSVRC2012_val_XXXXXXXX"):
        parse_dataset(f"imagenet-real:{tmp_path}")
    with pytest.raises(MissingInputError, match=r"header"):
        parse_dataset(f"csv:{tmp_path / 'missing.csv'}")


def test_voc2007_missing_split_lists_the_splits(voc_both):
    with pytest.raises(MissingInputError, match=r"no split file .*val\.txt; splits there: test, trainval "
                                                r"\(write voc2007:DIR@test\)"):
        parse_dataset(f"voc2007:{voc_both}@val")


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


MAIN = ("ImageSets", "Main")
VOC_BAD_FILES = {  # name: (change to voc_both, error type, message pattern)
    "missing image": (lambda r: os.remove(r / "JPEGImages" / "000003.jpg"),
                      MissingInputError, r"1 image\(s\) listed in .*test\.txt are missing, first .*000003\.jpg"),
    "duplicate split id": (lambda r: _edit(r.joinpath(*MAIN, "test.txt"), "000004\n", "000004\n000002\n"),
                           InputError, r"test\.txt lines 2 and 5: image 000002 listed twice"),
    "duplicate label id": (lambda r: _edit(r.joinpath(*MAIN, "dog_test.txt"), "000004 -1\n", "000004 -1\n000004 -1\n"),
                           InputError, r"dog_test\.txt lines 4 and 5: image 000004 listed twice"),
    "label out of range": (lambda r: _edit(r.joinpath(*MAIN, "cat_test.txt"), "000002  1", "000002  2"),
                           InputError, r"cat_test\.txt line 2: expected 'IMAGE_ID LABEL' .*got '000002 2'"),
    "label ids differ from split": (
        lambda r: _edit(r.joinpath(*MAIN, "bus_test.txt"), "000003 -1", "000009 -1"),
        InputError, r"bus_test\.txt lists other images than .*test\.txt: 1 image\(s\) of the split missing "
                    r"\(first 000003\); 1 image\(s\) not in the split \(first 000009\)"),
    "some label files missing": (lambda r: os.remove(r.joinpath(*MAIN, "sofa_test.txt")),
                                 MissingInputError, r"1 of the 20 label files of split test .*sofa_test\.txt"),
    "malformed XML": (lambda r: (r / "Annotations" / "000002.xml").write_text("<annotation><object>"),
                      InputError, r"000002\.xml: malformed XML"),
    "unknown XML class": (lambda r: (r / "Annotations" / "000001.xml").write_text(_voc_xml([("dragon", 0)])),
                          InputError, r"000001\.xml: unknown class 'dragon'"),
    "bad difficult flag": (lambda r: (r / "Annotations" / "000001.xml").write_text(_voc_xml([("dog", "yes")])),
                           InputError, r"000001\.xml: object 'dog' has <difficult>yes"),
    "empty split": (lambda r: r.joinpath(*MAIN, "test.txt").write_text("\n"),
                    InputError, r"test\.txt lists no images"),
    "no labels at all": (lambda r: [shutil.rmtree(r / "Annotations")]
                         + [f.unlink() for f in r.joinpath(*MAIN).glob("*_test.txt")],
                         MissingInputError, r"no labels for split test"),
}


@pytest.mark.parametrize("case", list(VOC_BAD_FILES))
def test_voc2007_bad_files_give_one_clear_error(voc_both, case):
    change, error, pattern = VOC_BAD_FILES[case]
    parse_dataset(f"voc2007:{voc_both}")  # fine before the change
    change(voc_both)
    with pytest.raises(error, match=pattern):
        parse_dataset(f"voc2007:{voc_both}")


# ------------------------------------------------------------------ registry
def test_unknown_prefix_lists_known():
    for spec in ("imagenet:/data", "no-colon-at-all"):
        with pytest.raises(InputError, match="known prefixes") as info:
            parse_dataset(spec)
        for prefix, kind in DATASETS.items():
            assert f"{prefix}:" in str(info.value) and kind.syntax in str(info.value)
    assert {"imagenet-real", "voc2007", "coco2014", "csv", "mosaic", "mosaic2", "mosaic3",
            "subset"} <= set(DATASETS)


def test_kind_chain_options_and_size_dependence():
    """The prefix chain (mosaic*, subset wrapping other specs) is read in one place."""
    assert dataset_kind("mosaic3:csv:x.csv").prefix == "mosaic3"
    assert dataset_kind("subset:5:7:mosaic:csv:x.csv").prefix == "subset"
    assert is_size_dependent("mosaic:imagenet-real:/d") and is_size_dependent("subset:5:mosaic2:csv:x")
    assert not is_size_dependent("subset:5:csv:x") and not is_size_dependent("voc2007:/d@trainval")
    assert dataset_options("csv:x") == {"classes_file"} and dataset_options("voc2007:/d") == set()
    assert dataset_options("subset:3:mosaic:csv:x") == {"classes_file", "seed", "count"}
    for bad in ("subset:x:csv:y", "subset:3", "subset:3:4"):
        with pytest.raises(InputError, match=r"subset:N\[:SEED\]:SPEC"):
            dataset_kind(bad).inner(bad.partition(":")[2])


def test_options_only_where_they_apply(voc, csv_dir):
    with pytest.raises(InputError, match="count applies to mosaic, mosaic2, mosaic3 specs only"):
        parse_dataset(f"voc2007:{voc}", count=3)
    with pytest.raises(InputError, match="seed applies to mosaic"):
        parse_dataset(f"csv:{csv_dir / 'labels.csv'}", seed=1)
    with pytest.raises(InputError, match="classes_file applies to csv specs only"):
        parse_dataset(f"voc2007:{voc}", classes_file=csv_dir / "labels.csv")
    classes = csv_dir / "classes.txt"
    classes.write_text("dog\ncat\nbird\nfish\n")
    m = parse_dataset(f"mosaic:csv:{csv_dir / 'labels.csv'}", size=32, classes_file=classes)
    assert m.classes == ["dog", "cat", "bird", "fish"]  # passed through to the inner csv
    parse_dataset(f"voc2007:{voc}", size=224)  # the evaluation size is accepted everywhere


def _many(folder, n):
    """``folder/many.csv`` over n solid-colour images labelled c0..c4."""
    for i in range(n):
        _image(folder / f"{i}.png", (10 * i, 100, 200 - 5 * i), size=(12, 10))
    (folder / "many.csv").write_text("image,labels\n" + "".join(f"{i}.png,c{i % 5}\n" for i in range(n)))
    return folder / "many.csv"


def test_every_kind_is_a_multilabel_dataset(voc, coco, csv_dir):
    labels, many = csv_dir / "labels.csv", _many(csv_dir / "many", 24)
    expected = {  # spec: (short_name, full_frame, size_dependent)
        f"voc2007:{voc}@trainval": ("voc2007@trainval", True, False),
        f"coco2014:{coco}": ("coco2014@val", True, False),
        f"csv:{labels}": ("csv:labels.csv", False, False),
        f"mosaic:csv:{many}": ("mosaic2x2(csv:many.csv)", True, True),
        f"mosaic3:csv:{many}": ("mosaic3x3(csv:many.csv)", True, True),
        f"subset:3:csv:{labels}": ("subset3(csv:labels.csv)", False, False),
        f"subset:4:2:mosaic:csv:{many}": ("subset4@seed2(mosaic2x2(csv:many.csv))", True, True),
    }
    attributes = [name for name in MultiLabelDataset.__annotations__]
    assert {"name", "short_name", "classes", "label_space", "full_frame", "size_dependent"} <= set(attributes)
    for spec, (short, full_frame, size_dependent) in expected.items():
        ds = parse_dataset(spec, size=32)
        assert isinstance(ds, MultiLabelDataset), spec
        assert all(name in vars(ds) or name in vars(type(ds)) for name in attributes), spec  # explicit
        assert (ds.name, ds.short_name, ds.full_frame, ds.size_dependent) == (spec, short, full_frame,
                                                                              size_dependent)
        assert ds.size_dependent == is_size_dependent(spec)
        val, test = ds.split(0.5, 0)
        assert sorted(np.concatenate([val, test]).tolist()) == list(range(len(ds)))
        assert ds.targets().shape == ds.ignore_mask().shape == (len(ds), len(ds.classes))
        assert len({ds.image_id(i) for i in range(len(ds))}) == len(ds)


# ------------------------------------------------------------------ COCO 2014
COCO = {"categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "images": [{"id": 7, "file_name": "b.jpg"}, {"id": 5, "file_name": "a.jpg"}, {"id": 9, "file_name": "c.jpg"}],
        "annotations": [{"image_id": 5, "category_id": 18, "iscrowd": 0},
                        {"image_id": 5, "category_id": 18, "iscrowd": 0},
                        {"image_id": 7, "category_id": 1, "iscrowd": 1},   # crowd counts as positive
                        {"image_id": 7, "category_id": 3, "iscrowd": 0}]}  # c.jpg: no annotations, kept


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "coco"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _image(root / "val2014" / name)
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(COCO))
    return root


def test_coco2014(coco):
    ds = parse_dataset(f"coco2014:{coco}")
    assert ds.classes == ["person", "car", "dog"] and ds.label_space == "coco2014"
    assert ds.short_name == "coco2014@val" and ds.full_frame and not ds.size_dependent
    assert [ds.image_id(i) for i in range(len(ds))] == [
        "val2014/a.jpg", "val2014/b.jpg", "val2014/c.jpg"]
    assert ds.targets().tolist() == [[0, 0, 1], [1, 1, 0], [0, 0, 0]]
    assert not ds.ignore_mask().any()
    assert ds[2][0].mode == "RGB"


def _coco_json(change):
    def apply(root):
        data = json.loads(json.dumps(COCO))
        change(data)
        (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    return apply


COCO_BAD_FILES = {
    "missing image": (lambda r: os.remove(r / "val2014" / "c.jpg"),
                      MissingInputError, r"1 image\(s\) listed in .*val2014\.json are missing, first .*c\.jpg"),
    "malformed JSON": (lambda r: (r / "annotations" / "instances_val2014.json").write_text('{"images": [\n{"id": 1,}'),
                       InputError, r"instances_val2014\.json line 2 column \d+: malformed JSON"),
    "unknown category": (_coco_json(lambda d: d["annotations"][1].update(category_id=99)),
                         InputError, r"annotations\[1\] has category_id 99, which is not in 'categories'"),
    "unknown image": (_coco_json(lambda d: d["annotations"][3].update(image_id=4)),
                      InputError, r"annotations\[3\] refers to image_id 4, which is not in 'images'"),
    "duplicate image id": (_coco_json(lambda d: d["images"][2].update(id=7)), InputError, r"image id 7 appears twice"),
    "duplicate file name": (_coco_json(lambda d: d["images"][2].update(file_name="a.jpg")),
                            InputError, r"image file_name 'a\.jpg' appears twice"),
    "record without a field": (_coco_json(lambda d: d["categories"][0].pop("name")),
                               InputError, r"categories\[0\] = .* lacks id / name"),
    "no images list": (_coco_json(lambda d: d.pop("images")), InputError, r"has no list 'images'"),
}


@pytest.mark.parametrize("case", list(COCO_BAD_FILES))
def test_coco2014_bad_files_give_one_clear_error(coco, case):
    change, error, pattern = COCO_BAD_FILES[case]
    parse_dataset(f"coco2014:{coco}")
    change(coco)
    with pytest.raises(error, match=pattern):
        parse_dataset(f"coco2014:{coco}")


# ------------------------------------------------------------------ COCO, any year and split
BOXLESS = {  # image-level labels only: each annotation is (image_id, category_id), no bbox / segmentation
    "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"},
                   {"id": 38, "name": "kite"}],
    "images": [{"id": 30, "file_name": "000000000030.jpg"}, {"id": 4, "file_name": "000000000004.jpg"},
               {"id": 12, "file_name": "000000000012.jpg"}, {"id": 7, "file_name": "000000000007.jpg"}],
    "annotations": [{"image_id": 4, "category_id": 1}, {"image_id": 4, "category_id": 18},
                    {"image_id": 7, "category_id": 1}, {"image_id": 12, "category_id": 1},
                    {"image_id": 12, "category_id": 38}, {"image_id": 12, "category_id": 38},
                    {"image_id": 30, "category_id": 3}]}
BOXLESS_TARGETS = [[1, 0, 1, 0], [1, 0, 0, 0], [1, 0, 0, 1], [0, 1, 0, 0]]  # rows: 04, 07, 12, 30


def _write_coco(root, split, data=BOXLESS):
    for k, im in enumerate(data["images"]):
        _image(root / split / im["file_name"], (60 * k, 90, 200 - 40 * k), size=(24, 16))
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


@pytest.fixture
def coco_any(tmp_path):
    """A COCO-layout folder with val2017, train2017 and val2014 (the same four images, boxless labels)."""
    for split in ("val2017", "train2017", "val2014"):
        _write_coco(tmp_path / "coco", split)
    return tmp_path / "coco"


def test_coco_any_year_and_split(coco_any):
    ds = parse_dataset(f"coco:{coco_any}@val2017")
    assert isinstance(ds, MultiLabelDataset) and len(ds) == 4
    assert ds.classes == ["person", "car", "dog", "kite"]  # category id order
    assert (ds.name, ds.short_name, ds.label_space) == (f"coco:{coco_any}@val2017", "coco@val2017", "coco2014")
    assert ds.full_frame and not ds.size_dependent  # evaluated full frame, like VOC
    assert [ds.image_id(i) for i in range(4)] == [f"val2017/0000000000{n:02d}.jpg" for n in (4, 7, 12, 30)]
    assert ds.targets().tolist() == BOXLESS_TARGETS and not ds.ignore_mask().any()
    image, target, ignore = ds[2]
    assert image.mode == "RGB" and image.size == (24, 16) and target.tolist() == BOXLESS_TARGETS[2]
    assert parse_dataset(f"coco:{coco_any}@val2017").fingerprint() == ds.fingerprint()
    prints = {ds.fingerprint()}
    for split in ("train2017", "val2014"):
        other = parse_dataset(f"coco:{coco_any}@{split}")
        assert other.short_name == f"coco@{split}" and other.image_id(0) == f"{split}/000000000004.jpg"
        assert other.targets().tolist() == BOXLESS_TARGETS
        prints.add(other.fingerprint())
    assert len(prints) == 3
    # the old spelling reads the same 2014 files, under its own (unchanged) fingerprint and short name
    old = parse_dataset(f"coco2014:{coco_any}")
    assert old.short_name == "coco2014@val" and old.targets().tolist() == BOXLESS_TARGETS
    assert old.fingerprint() != parse_dataset(f"coco:{coco_any}@val2014").fingerprint()
    jpg = coco_any / "val2017" / "000000000012.jpg"
    assert _touch_then_rewrite(jpg, lambda: parse_dataset(f"coco:{coco_any}@val2017").fingerprint()) != ds.fingerprint()


def test_coco_label_space_reaches_the_shipped_class_map(coco_any, tmp_path):
    """COCO 2014 and 2017 share the 80 category names: the ImageNet->coco2014 map applies to any year."""
    ds = parse_dataset(f"coco:{coco_any}@val2017")
    cmap = class_map_for(1000, ds)
    assert cmap.target_space == "coco2014" and cmap.classes == ds.classes
    assert cmap.unmapped == ["person", "kite"]
    custom = json.loads(json.dumps(BOXLESS))
    custom["categories"][1]["name"] = "widget"  # not a COCO category: a custom label space
    other = parse_dataset(f"coco:{_write_coco(tmp_path / 'custom', 'val2017', custom)}@val2017")
    assert other.label_space == "custom"
    with pytest.raises(InputError, match="no class map"):
        class_map_for(1000, other)


def test_coco_layout_errors_are_one_line(coco_any, tmp_path):
    cases = [
        (f"coco:{coco_any}", InputError,
         rf"no split in .*; write coco:DIR@SPLIT; splits there: train2017, val2014, val2017 "
         rf"\(write coco:{re.escape(str(coco_any))}@train2017\)"),
        (f"coco:{coco_any}@val2012", MissingInputError,
         rf"annotation file {re.escape(str(coco_any / 'annotations' / 'instances_val2012.json'))} not found; "
         rf"splits there: train2017, val2014, val2017"),
        (f"coco:{tmp_path / 'empty'}@val2017", MissingInputError, r"not a folder; expected COCO's layout"),
        (f"coco:{coco_any}@val-2017", InputError, r"bad split .*SPLIT a folder name such as val2017"),
    ]
    (tmp_path / "bare").mkdir()
    cases.append((f"coco:{tmp_path / 'bare'}@val2017", MissingInputError,
                  r"instances_val2017\.json not found; no annotations/instances_\*\.json there; expected "
                  r"COCO's layout DIR/annotations/instances_<split>\.json and DIR/<split>/<file_name>"))
    shutil.rmtree(coco_any / "train2017")
    cases.append((f"coco:{coco_any}@train2017", MissingInputError,
                  rf"image folder {re.escape(str(coco_any / 'train2017'))} not found; put the train2017 images "
                  rf"there \(instances_train2017\.json names them train2017/<file_name>\)"))
    os.remove(coco_any / "val2014" / "000000000030.jpg")
    cases.append((f"coco:{coco_any}@val2014", MissingInputError,
                  r"1 image\(s\) listed in .*instances_val2014\.json are missing, first .*000000000030\.jpg"))
    (coco_any / "annotations" / "instances_val2017.json").write_text('{"images": [\n{"id": 1,}')
    cases.append((f"coco:{coco_any}@val2017", InputError, r"coco: .*instances_val2017\.json line 2 column \d+: "
                                                          r"malformed JSON"))
    for spec, error, pattern in cases:
        with pytest.raises(error, match=pattern) as info:
            parse_dataset(spec)
        assert "\n" not in str(info.value), spec


def test_coco_is_registered_for_bench_help():
    from click.testing import CliRunner

    from posthoc_csra.cli import main
    assert DATASETS["coco"].syntax == "coco:DIR@SPLIT" and dataset_kind("coco:/d@val2017").prefix == "coco"
    assert dataset_options("coco:/d@val2017") == set() and not is_size_dependent("subset:3:coco:/d@val2017")
    help_text = " ".join(CliRunner().invoke(main, ["bench", "--help"]).output.split())
    assert "coco:DIR@SPLIT" in help_text and "coco2014:DIR[@SPLIT]" in help_text


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
    assert ds.short_name == "csv:labels.csv" and not ds.full_frame and not ds.size_dependent
    assert ds.targets().tolist() == [[0, 1, 1], [1, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert ds.image_id(1) == "sub/y.jpg" and ds[1][0].mode == "RGB"
    assert not ds.ignore_mask().any()
    from posthoc_csra.images import ImageLoadError
    (csv_dir / "z.png").write_bytes(b"not an image")  # decoding goes through load_rgb
    with pytest.raises(ImageLoadError):
        ds[2]


def test_csv_classes_file(csv_dir):
    classes = csv_dir / "classes.txt"
    classes.write_text("dog\ncat\nbird\nfish\n")
    ds = parse_dataset(f"csv:{csv_dir / 'labels.csv'}", classes_file=classes)
    assert ds.classes == ["dog", "cat", "bird", "fish"]
    assert ds.targets().tolist() == [[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]]


CSV_BAD_FILES = {  # name: (file contents or None, classes file contents or None, error, pattern)
    "no header": ("x.png,cat\n", None, InputError, r"header row 'image,labels'"),
    "missing image": ("image,labels\nx.png,cat\nnope.png,cat\n", None, MissingInputError,
                      r"row 3: image .*nope\.png not found"),
    "duplicate image": ("image,labels\nx.png,cat\nw.png,dog\n./x.png,dog\n", None, InputError,
                        r"rows 2 and 4: image './x\.png' listed twice"),
    "unknown class": ("image,labels\nx.png,cat\nw.png,cat|bird\n", "dog\ncat\n", InputError,
                      r"row 3 \(w\.png\): label 'bird' is not in the classes file"),
    "malformed CSV": ('image,labels\nx.png,cat\n"w.png"x,cat\n', None, InputError,
                      r"line 3: malformed CSV \(',' expected after '\"'\)"),
    "not UTF-8": (b"image,labels\nx.png,caf\xe9\n", None, InputError, r"is not UTF-8 text"),
    "empty image path": ("image,labels\n,cat\n", None, InputError, r"row 2: empty image path"),
    "no rows": ("image,labels\n\n", None, InputError, r"lists no images"),
    "duplicate class": ("image,labels\nx.png,cat\n", "cat\ndog\ncat\n", InputError,
                        r"classes\.txt line 3: class 'cat' listed twice"),
    "empty classes file": ("image,labels\nx.png,cat\n", "\n", InputError, r"classes\.txt is empty"),
}


@pytest.mark.parametrize("case", list(CSV_BAD_FILES))
def test_csv_bad_files_give_one_clear_error(csv_dir, case):
    text, classes, error, pattern = CSV_BAD_FILES[case]
    path = csv_dir / "bad.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    kwargs = {}
    if classes is not None:
        (csv_dir / "classes.txt").write_text(classes)
        kwargs["classes_file"] = csv_dir / "classes.txt"
    with pytest.raises(error, match=pattern):
        parse_dataset(f"csv:{path}", **kwargs)
    with pytest.raises(MissingInputError, match="classes file .*nope.txt not found"):
        parse_dataset(f"csv:{csv_dir / 'labels.csv'}", classes_file=csv_dir / "nope.txt")


# ------------------------------------------------------------------ imagenet-real
def _real():
    import timm
    path = Path(timm.__file__).parent / "data" / "_info" / "imagenet_real_labels.json"
    return json.loads(path.read_text())


def test_imagenet_real_synthetic(tmp_path):
    real = _real()
    multi = next(n for n in range(1, 50001) if len(real[n - 1]) > 1)
    single = next(n for n in range(1, 50001) if len(real[n - 1]) == 1)
    empty = [n for n in range(1, 50001) if not real[n - 1]][:2]
    _image(tmp_path / f"ILSVRC2012_val_{multi:08d}.JPEG")
    _image(tmp_path / "deep" / "er" / f"ILSVRC2012_val_{single:08d}.png")
    for n in empty:  # no ReaL label: left out
        _image(tmp_path / f"ILSVRC2012_val_{n:08d}.jpg")
    _image(tmp_path / "not_a_val_image.jpg")
    ds = parse_dataset(f"imagenet-real:{tmp_path}")
    assert len(ds) == 2 and ds.label_space == "imagenet-1k"
    assert ds.short_name == "imagenet-real" and not ds.full_frame and not ds.size_dependent
    assert len(ds.classes) == 1000 and ds.classes[0].startswith("tench")
    got = {ds.image_id(i): sorted(np.flatnonzero(ds.targets()[i]).tolist()) for i in range(2)}
    assert got == {f"ILSVRC2012_val_{multi:08d}.JPEG": sorted(real[multi - 1]),
                   f"deep/er/ILSVRC2012_val_{single:08d}.png": sorted(real[single - 1])}
    image, target, ignore = ds[0]
    assert image.mode == "RGB" and target.shape == (1000,) and not ignore.any()
    _image(tmp_path / "copy" / f"ILSVRC2012_val_{single:08d}.JPEG")
    with pytest.raises(InputError, match=f"val image {single} found twice"):
        parse_dataset(f"imagenet-real:{tmp_path}")


# ------------------------------------------------------------------ mosaics
def test_mosaic_determinism_and_union(csv_dir):
    spec = f"mosaic:csv:{csv_dir / 'labels.csv'}"
    with pytest.raises(InputError, match="size is required"):
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


# ------------------------------------------------------------------ subsets
def test_subset_is_fixed_and_fingerprints_its_ids(csv_dir):
    many = _many(csv_dir / "many", 30)
    full = parse_dataset(f"csv:{many}")
    a = parse_dataset(f"subset:8:csv:{many}")
    assert isinstance(a, Subset) and len(a) == 8 and a.classes == full.classes
    assert a.fingerprint() == parse_dataset(f"subset:8:0:csv:{many}").fingerprint()  # seed 0 by default
    rows = [int(Path(a.image_id(i)).stem) for i in range(8)]  # image i.png is row i of the csv
    assert rows == sorted(set(rows)) and len(rows) == 8
    assert np.array_equal(a.targets(), full.targets()[rows])
    assert np.array_equal(a.ignore_mask(), full.ignore_mask()[rows])
    assert np.array_equal(np.asarray(a[3][0]), np.asarray(full[rows[3]][0]))
    b = parse_dataset(f"subset:8:1:csv:{many}")
    assert {b.image_id(i) for i in range(8)} != {a.image_id(i) for i in range(8)}
    assert b.fingerprint() != a.fingerprint()
    assert parse_dataset(f"subset:9:csv:{many}").fingerprint() != a.fingerprint()
    # the fingerprint follows the chosen files (and, conservatively, the whole inner dataset)
    assert _touch_then_rewrite(full.paths[rows[0]],
                               lambda: parse_dataset(f"subset:8:csv:{many}").fingerprint()) != a.fingerprint()
    with pytest.raises(InputError, match=r"N=31 but csv:many\.csv has 30 images"):
        parse_dataset(f"subset:31:csv:{many}")
    with pytest.raises(InputError, match="N=0"):
        parse_dataset(f"subset:0:csv:{many}")


def test_subset_split_is_the_inner_split_restricted(csv_dir):
    many = _many(csv_dir / "many", 40)
    full, sub = parse_dataset(f"csv:{many}"), parse_dataset(f"subset:20:3:csv:{many}")
    full_val = {full.image_id(i) for i in dataset_split(full, 0.5, 7)[0]}
    val, test = dataset_split(sub, 0.5, 7)
    assert len(val) + len(test) == 20 and not set(val) & set(test)
    assert {sub.image_id(i) for i in val} == {sub.image_id(i) for i in range(20)} & full_val
    # mosaics of a subset, and a subset of mosaics, keep val and test tile-disjoint
    mosaic_of_subset = parse_dataset(f"mosaic:subset:20:3:csv:{many}", size=16)
    subset_of_mosaic = parse_dataset(f"subset:6:mosaic:csv:{many}", size=16, count=10)
    for ds, tiles in ((mosaic_of_subset, mosaic_of_subset.tiles),
                      (subset_of_mosaic, lambda i: subset_of_mosaic.inner.tiles(int(subset_of_mosaic.indices[i])))):
        v, t = dataset_split(ds, 0.5, 0)
        assert len(v) and len(t)
        assert not {j for i in v for j in tiles(i)} & {j for i in t for j in tiles(i)}


# ------------------------------------------------------------------ parts
def test_parts_are_a_seeded_partition(csv_dir):
    many = _many(csv_dir / "many", 23)
    full = parse_dataset(f"csv:{many}")
    for n_parts, seed in ((1, 0), (2, 0), (3, 0), (3, 7), (5, 2), (23, 1)):
        parts = [parse_dataset(f"part:{k}/{n_parts}:{seed}:csv:{many}") for k in range(1, n_parts + 1)]
        ids = [[p.image_id(i) for i in range(len(p))] for p in parts]
        assert sorted(len(p) for p in parts) in ([23 // n_parts] * (n_parts - 23 % n_parts)
                                                 + [23 // n_parts + 1] * (23 % n_parts),)  # near-equal
        assert sorted(i for part in ids for i in part) == sorted(full.image_id(i) for i in range(23))  # union
        assert len({i for part in ids for i in part}) == 23  # disjoint
        for part in parts:
            assert isinstance(part, Part) and isinstance(part, MultiLabelDataset)
            assert np.array_equal(part.targets(), full.targets()[part.indices])
            assert list(part.indices) == sorted(part.indices)  # in the inner order
    a = parse_dataset(f"part:1/3:csv:{many}")
    assert a.fingerprint() == parse_dataset(f"part:1/3:0:csv:{many}").fingerprint()  # seed 0 by default
    assert a.short_name == "part1of3(csv:many.csv)" and a.classes == full.classes and a.label_space == "custom"
    again = parse_dataset(f"part:1/3:csv:{many}")
    assert np.array_equal(again.indices, a.indices) and again.fingerprint() == a.fingerprint()  # deterministic
    b = parse_dataset(f"part:1/3:5:csv:{many}")
    assert b.short_name == "part1of3@seed5(csv:many.csv)"
    assert not np.array_equal(b.indices, a.indices) and b.fingerprint() != a.fingerprint()  # seeds differ
    prints = {parse_dataset(spec).fingerprint() for spec in
              (f"part:1/3:csv:{many}", f"part:2/3:csv:{many}", f"part:1/2:csv:{many}", f"part:1/3:5:csv:{many}",
               f"subset:8:csv:{many}")}
    assert len(prints) == 5  # K, N, seed (and the kind) are in the fingerprint
    assert partition(23, 2, 3, 0).tolist() == a.inner.split(0.0, 0)[1][partition(23, 2, 3, 0)].tolist()
    # the fingerprint follows the inner dataset
    assert _touch_then_rewrite(full.paths[0], lambda: parse_dataset(f"part:1/3:csv:{many}").fingerprint()) \
        != a.fingerprint()


def test_part_split_and_wrapping(csv_dir):
    many = _many(csv_dir / "many", 40)
    full, part = parse_dataset(f"csv:{many}"), parse_dataset(f"part:2/2:3:csv:{many}")
    full_val = {full.image_id(i) for i in dataset_split(full, 0.5, 7)[0]}
    val, test = dataset_split(part, 0.5, 7)
    assert len(val) + len(test) == 20 and not set(val) & set(test)
    assert {part.image_id(i) for i in val} == {part.image_id(i) for i in range(20)} & full_val
    assert dataset_kind(f"part:1/2:mosaic:csv:{many}").prefix == "part"
    assert is_size_dependent(f"part:1/2:mosaic:csv:{many}") and not is_size_dependent(f"part:1/2:csv:{many}")
    assert dataset_options(f"part:1/2:7:mosaic:csv:{many}") == {"classes_file", "seed", "count"}
    m = parse_dataset(f"part:1/2:mosaic:csv:{many}", size=16, count=10)
    assert len(m) == 5 and m.size_dependent and m.full_frame and m.short_name == "part1of2(mosaic2x2(csv:many.csv))"


@pytest.mark.parametrize("spec, pattern", [
    ("part:0/2:csv:{many}", r"K=0 of N=2 in part:0/2:csv:.*; use N >= 1 and 1 <= K <= N"),
    ("part:3/2:csv:{many}", r"K=3 of N=2"),
    ("part:1/0:csv:{many}", r"K=1 of N=0"),
    ("part:1:csv:{many}", r"expected part:K/N\[:SEED\]:SPEC"),
    ("part:1/2", r"expected part:K/N\[:SEED\]:SPEC"),
    ("part:1/2:3", r"expected part:K/N\[:SEED\]:SPEC"),
    ("part:a/2:csv:{many}", r"expected part:K/N\[:SEED\]:SPEC"),
    ("part:1/2:-1:csv:{many}", r"SEED=-1 in part:1/2:-1:csv:.*; the seed is a non-negative integer"),
    ("part:1/2:0.5:csv:{many}", r"SEED=0\.5 in"),
    ("part:11/11:csv:{many}", r"part: N=11 but csv:many\.csv has 10 images; use 1 <= N <= 10"),
])
def test_part_bad_k_or_n_give_one_line_errors(csv_dir, spec, pattern):
    many = _many(csv_dir / "many", 10)
    with pytest.raises(InputError, match=pattern) as info:
        parse_dataset(spec.format(many=many))
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="1 <= K <= N"):
        partition(10, 0, 2)
    with pytest.raises(InputError, match="N <= 10"):
        partition(10, 1, 11)


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
    with pytest.raises(InputError, match="shipped maps: .*voc2007"):
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


def test_class_map_for_uses_the_shipped_maps():
    shipped = sorted(p.name[len("imagenet_to_"):-len(".json")] for p in
                     (Path(__file__).parents[1] / "posthoc_csra" / "data").glob("imagenet_to_*.json"))
    assert list(CLASS_MAP_SPACES) == shipped and {"voc2007", "coco2014"} <= set(shipped)

    class Fake:  # only what class_map_for reads
        def __init__(self, classes, label_space):
            self.name, self.classes, self.label_space = "fake", classes, label_space

    for space in CLASS_MAP_SPACES:
        classes = list(reversed(load_class_map(space).classes))
        cmap = class_map_for(1000, Fake(classes, space))
        assert cmap.classes == classes and cmap.target_space == space
        assert class_map_for(len(classes), Fake(classes, space)) is None
    with pytest.raises(InputError, match=r"no class map .*shipped maps: imagenet-1k \(1000 classes\) to "
                                         + ", ".join(CLASS_MAP_SPACES)):
        class_map_for(1000, Fake(["a", "b"], "custom"))
    with pytest.raises(InputError, match="no class map"):
        class_map_for(20, Fake(["x"] * 80, "coco2014"))


def test_pool_members():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(5, 12)).astype(np.float32)
    members = [[0, 3], [], [11], [2, 5, 7]]
    mx, sm = pool_members(scores, members, "max"), pool_members(scores, members, "sum")
    assert mx.shape == sm.shape == (5, 4) and mx.dtype == sm.dtype == np.float32
    for k, m in enumerate(members):
        if m:
            np.testing.assert_array_equal(mx[:, k], scores[:, m].max(1))
            np.testing.assert_allclose(sm[:, k], scores[:, m].sum(1), rtol=1e-6)
        else:
            assert np.isnan(mx[:, k]).all() and np.isnan(sm[:, k]).all()
    assert pool_members(scores, [], "max").shape == (5, 0)
    with pytest.raises(InputError, match="pool must be one of max, sum"):
        pool_members(scores, members, "mean")


# ------------------------------------------------------------------ real data
def test_shared_imagenet_real(shared):
    root = shared / "data" / "imagenet-val-real" / "images"
    ds = parse_dataset(f"imagenet-real:{root}")
    real = _real()
    numbers = sorted(int(p.name.split("_")[-1].split(".")[0]) for p in root.iterdir())
    assert len(numbers) == 530 and len(ds) == sum(bool(real[n - 1]) for n in numbers) == 509
    assert (ds.targets().sum(1) > 1).sum() == 59 and (ds.targets().sum(1) >= 1).all()
    for i in (0, 100, 508):
        n = int(ds.image_id(i).split("_")[-1].split(".")[0])
        assert sorted(np.flatnonzero(ds.targets()[i]).tolist()) == sorted(real[n - 1])
    image, _, _ = ds[0]
    assert image.mode == "RGB"
    m = parse_dataset(f"mosaic:imagenet-real:{root}", size=224, seed=1)
    assert len(m) == 509 // 4 and m[0][0].size == (224, 224)


def test_shared_voc2007_trainval(shared):
    """The real VOC2007 label files: every image of trainval.txt, labels as the files say."""
    root = shared / "data" / "voc2007"
    ds = parse_dataset(f"voc2007:{root}@trainval")
    main = root / "VOC2007" / "ImageSets" / "Main"
    ids = main.joinpath("trainval.txt").read_text().split()
    assert len(ds) == len(ids) == len(list((root / "VOC2007" / "JPEGImages").glob("*.jpg"))) == 2000
    assert [ds.image_id(i) for i in range(len(ds))] == [f"JPEGImages/{i}.jpg" for i in ids]
    positives, difficult = {}, {}
    for k, cls in enumerate(VOC_CLASSES):  # an independent read of the label files
        for line in main.joinpath(f"{cls}_trainval.txt").read_text().splitlines():
            image, value = line.split()
            (positives if value == "1" else difficult if value == "0" else {}).setdefault(image, set()).add(k)
    t, g = ds.targets(), ds.ignore_mask()
    for row, image in enumerate(ids):
        assert set(np.flatnonzero(t[row])) == positives.get(image, set())
        assert set(np.flatnonzero(g[row])) == difficult.get(image, set())
    multi = int((t.sum(1) >= 2).sum())
    print(f"voc2007 trainval: {len(ds)} images, {multi} with two or more classes, "
          f"{int(t.sum())} positives, {int(g.sum())} difficult-only (ignored)")
    assert multi == sum(len(v) >= 2 for v in positives.values()) == 774
    assert ds.full_frame and ds.short_name == "voc2007@trainval"
    assert ds[0][0].mode == "RGB"


def test_mosaic_val_and_test_share_no_tile(small_csv_dataset):
    mosaic = parse_dataset(f"mosaic:csv:{small_csv_dataset(20, 3)}", size=16, count=10)
    val, test = dataset_split(mosaic, 0.5, 0)
    assert len(val) == len(test) == 5
    val_tiles = {j for i in val for j in mosaic.tiles(i)}
    test_tiles = {j for i in test for j in mosaic.tiles(i)}
    assert not val_tiles & test_tiles
    with pytest.raises(ValueError, match="halves"):
        dataset_split(mosaic, 0.3, 0)


# ------------------------------------------------------------------ pinned fingerprints
# The statistics cache is keyed by dataset fingerprints: restructuring this module must never change them.
# These references restate the formulas of the existing kinds independently. Images enter by their content
# hash (sha256 of the bytes), not size and mtime, since 2026-12-02: a re-copy of the same files keeps the key.
def _sha(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=True).encode())


def _labeled_reference(key, label_space, classes, ids, paths, targets, ignore):
    h = _sha({"spec": key, "label_space": label_space, "classes": list(classes), "n": len(ids)})
    for image_id, path in zip(ids, paths):
        h.update(f"\n{image_id}\t{hashlib.sha256(Path(path).read_bytes()).hexdigest()}".encode())
    h.update(np.asarray(targets, np.uint8).tobytes() + np.asarray(ignore, bool).tobytes())
    return h.hexdigest()


def _subset_reference(inner, n, seed):
    idx = np.sort(np.random.default_rng(seed).choice(len(inner), size=n, replace=False))
    h = _sha({"subset": n, "seed": seed, "inner": inner.fingerprint()})
    h.update(idx.astype(np.int64).tobytes())
    h.update("\n".join(inner.image_id(int(i)) for i in idx).encode())
    return h.hexdigest()


def _mosaic_reference(inner, k, size, seed, count):
    val, test = split_indices(len(inner), 0.5, seed)
    n_val = int(round(count * 0.5))
    tiles = np.stack([np.random.default_rng([seed, i]).choice(val if i < n_val else test, size=k * k, replace=False)
                      for i in range(count)]).astype(np.int64)
    h = _sha({"mosaic": k, "seed": seed, "count": count, "size": size, "inner": inner.fingerprint()})
    h.update(tiles.tobytes())
    return h.hexdigest()


def test_fingerprints_of_existing_kinds_are_pinned(voc, voc_both, coco, csv_dir):
    state = {image: [_label_value(VOC_IMAGES[image], c) for c in VOC_CLASSES] for image in VOC_IMAGES}
    for folder in (voc / "VOC2007", voc_both):
        for split, ids in VOC_SPLITS.items():
            s = np.array([state[i] for i in ids])
            paths = [folder / "JPEGImages" / f"{i}.jpg" for i in ids]
            expected = _labeled_reference(f"voc2007:{folder.resolve()}@{split}", "voc2007", VOC_CLASSES,
                                          [f"JPEGImages/{i}.jpg" for i in ids], paths, s == 1, s == 0)
            assert parse_dataset(f"voc2007:{folder}@{split}").fingerprint() == expected
    assert parse_dataset(f"voc2007:{voc}").fingerprint() == parse_dataset(f"voc2007:{voc}@test").fingerprint()
    names = ["a.jpg", "b.jpg", "c.jpg"]
    expected = _labeled_reference(f"coco2014:{coco.resolve()}@val", "coco2014", ["person", "car", "dog"],
                                  [f"val2014/{n}" for n in names], [coco / "val2014" / n for n in names],
                                  [[0, 0, 1], [1, 1, 0], [0, 0, 0]], np.zeros((3, 3), bool))
    assert parse_dataset(f"coco2014:{coco}").fingerprint() == expected
    assert parse_dataset(f"coco2014:{coco}@val").fingerprint() == expected
    labels = (csv_dir / "labels.csv").resolve()
    ids = ["x.png", "sub/y.jpg", "z.png", "w.png"]
    expected = _labeled_reference(f"csv:{labels}", "custom", ["bird", "cat", "dog"], ids,
                                  [csv_dir / i for i in ids], [[0, 1, 1], [1, 0, 1], [0, 0, 0], [0, 1, 0]],
                                  np.zeros((4, 3), bool))
    assert parse_dataset(f"csv:{labels}").fingerprint() == expected
    many = _many(csv_dir / "many", 24)
    inner = parse_dataset(f"csv:{many}")
    assert parse_dataset(f"subset:10:csv:{many}").fingerprint() == _subset_reference(inner, 10, 0)
    assert parse_dataset(f"subset:10:3:csv:{many}").fingerprint() == _subset_reference(inner, 10, 3)
    assert parse_dataset(f"mosaic:csv:{many}", size=32).fingerprint() == _mosaic_reference(inner, 2, 32, 0, 6)
    assert (parse_dataset(f"mosaic3:csv:{many}", size=48, seed=5, count=2).fingerprint()
            == _mosaic_reference(inner, 3, 48, 5, 2))
    voc_test = parse_dataset(f"voc2007:{voc}")
    assert parse_dataset(f"subset:2:1:voc2007:{voc}").fingerprint() == _subset_reference(voc_test, 2, 1)
    real = _real()
    numbers = [n for n in range(1, 50001) if real[n - 1]][:3]
    for n in numbers:
        _image(csv_dir / "inr" / f"ILSVRC2012_val_{n:08d}.JPEG", (n % 255, 9, 9))
    targets = np.zeros((3, 1000), np.uint8)
    for row, n in enumerate(numbers):
        targets[row, real[n - 1]] = 1
    from timm.data import ImageNetInfo
    root = (csv_dir / "inr").resolve()
    ids = [f"ILSVRC2012_val_{n:08d}.JPEG" for n in numbers]
    expected = _labeled_reference(f"imagenet-real:{root}", "imagenet-1k", list(ImageNetInfo().label_descriptions()),
                                  ids, [root / i for i in ids], targets, np.zeros((3, 1000), bool))
    assert parse_dataset(f"imagenet-real:{root}").fingerprint() == expected


def test_shared_coco2017_val(shared):
    """The real COCO 2017 val images with image-level (boxless) labels: COCO's own layout, 80 classes."""
    root = shared / "data" / "coco2017"
    ds = parse_dataset(f"coco:{root}@val2017")
    data = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    assert len(ds) == len(data["images"]) == 500 and len(ds.classes) == 80
    assert all(set(a) >= {"image_id", "category_id"} and "bbox" not in a for a in data["annotations"])
    cats = sorted(data["categories"], key=lambda c: c["id"])
    assert ds.classes == [c["name"] for c in cats] and ds.label_space == "coco2014" and ds.full_frame
    col = {c["id"]: k for k, c in enumerate(cats)}
    by_file = {im["id"]: im["file_name"] for im in data["images"]}
    expected = {}  # an independent read of the annotations
    for a in data["annotations"]:
        expected.setdefault(f"val2017/{by_file[a['image_id']]}", set()).add(col[a["category_id"]])
    t = ds.targets()
    assert {ds.image_id(i): set(np.flatnonzero(t[i])) for i in range(len(ds))} == {
        f"val2017/{f}": expected.get(f"val2017/{f}", set()) for f in by_file.values()}
    assert t[:, ds.classes.index("person")].all()  # person is positive in every image
    assert (t.sum(1) >= 2).sum() == 497
    cmap = class_map_for(1000, ds)
    assert cmap.classes == ds.classes and "person" in cmap.unmapped
    assert ds[0][0].mode == "RGB" and ds.short_name == "coco@val2017"


def test_shared_voc2007_halves_are_disjoint(shared):
    """part 1/2 and 2/2 of the real VOC2007 trainval share no image and together are all 2000."""
    spec = f"voc2007:{shared / 'data' / 'voc2007'}@trainval"
    halves = [parse_dataset(f"part:{k}/2:{spec}") for k in (1, 2)]
    ids = [{h.image_id(i) for i in range(len(h))} for h in halves]
    assert [len(h) for h in halves] == [1000, 1000] and not ids[0] & ids[1]
    full = parse_dataset(spec)
    assert ids[0] | ids[1] == {full.image_id(i) for i in range(len(full))}
    assert halves[0].short_name == "part1of2(voc2007@trainval)" and halves[0].full_frame
    assert halves[0].fingerprint() != halves[1].fingerprint()
    seeded = parse_dataset(f"part:1/2:1:{spec}")
    assert {seeded.image_id(i) for i in range(len(seeded))} != ids[0]


def test_fingerprint_values_are_pinned(tmp_path):
    """Literal values of the LabeledImages, Subset and Mosaic fingerprints over files of fixed bytes under a fixed
    key (equal to the references above when pinned); any mtime gives the same values."""
    from posthoc_csra.datasets import LabeledImages
    paths = []
    for i in range(10):
        path = tmp_path / f"img{i}.bin"
        path.write_bytes(bytes([i]) * (100 + 7 * i))
        os.utime(path, ns=(1_700_000_000_000_000_000 + i, 1_700_000_000_000_000_000 + 1000 * i))
        paths.append(path)
    targets = (np.arange(30).reshape(10, 3) % 4 == 0).astype(np.uint8)
    ignore = np.zeros((10, 3), bool)
    ignore[2, 1] = True
    ds = LabeledImages("x", "voc2007:/fixed/VOC2007@test", "voc2007", ["a", "b", "c"], paths,
                       [f"JPEGImages/{i:06d}.jpg" for i in range(10)], targets, ignore, full_frame=True)
    assert ds.fingerprint() == "2a09d0db32efdd11138e0abd7f02cb5ac20b143c138e184feabb72f46432e3b5"
    assert Subset("s", ds, 4, 1).fingerprint() == "469e99c5adb5da28d36b75f2a8622032cc03a9bcd853f7ce5418812198737cb0"
    assert (Mosaic("m", ds, 2, 32, seed=0, count=2).fingerprint()
            == "a3ae9b02db4dd8c1a15a216157e6a4039aa28a487c3c165888bed0ede1131245")


def test_one_reader_per_module_behind_the_registry():
    """posthoc_csra.datasets is a package: readers import base only, the registry imports the readers, and
    the names other modules import from posthoc_csra.datasets stay there."""
    import ast

    import posthoc_csra.datasets as package
    folder = Path(package.__file__).parent
    graph = {p.stem: {n.module for n in ast.parse(p.read_text()).body if isinstance(n, ast.ImportFrom)
                      and n.level == 1} for p in folder.glob("*.py")}
    readers = set(graph) - {"__init__", "registry", "base"}
    assert {"voc", "coco", "imagenet_real", "csv_file", "mosaic", "selection"} <= readers
    assert graph["base"] == set() and all(graph[r] == {"base"} for r in readers)
    assert graph["registry"] == readers | {"base"}
    assert not any("registry" in graph[m] for m in graph if m != "__init__")  # no reader imports the registry
    for kind in DATASETS.values():
        module = kind.build.__module__.rsplit(".", 1)[1]
        assert module in readers, (kind.prefix, module)
    for name in package.__all__ + ["MOSAIC_VAL_FRACTION"]:
        assert hasattr(package, name), name
    from posthoc_csra.datasets import dataset_split, split_indices  # noqa: F401  (evaluation, runner, notebooks)
