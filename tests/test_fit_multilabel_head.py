"""benchmarks/fit_multilabel_head.py: the paper's setting (a linear multi-label head on frozen pooled
features) made from a shared backbone, fitted on one part of the shared VOC images and evaluated by bench
on the other, with no class map. Real assets through the ``shared`` fixture; tiny sizes (64 px, a few
dozen training images) so it stays fast."""
import math
from pathlib import Path

import numpy as np
import pytest

from posthoc_csra.errors import InputError

MODEL = "tf_efficientnet_lite0"
SIZE = 64
N_TRAIN = 40


@pytest.fixture(scope="module")
def fit(benchmark_script):
    return benchmark_script("fit_multilabel_head")


@pytest.fixture(scope="module")
def fitted(fit, shared, tmp_path_factory):
    """A Lite0 head fitted at 64 px on the first 40 training-part images (L2 from 2-fold CV over two values)."""
    out = tmp_path_factory.mktemp("fixture")
    manifest = fit.fit_heads(shared, out, [MODEL], img_size=SIZE, seed=0, grid=(1e-2, 1e-1), folds=2,
                             max_images=N_TRAIN, workers=0, progress=False)
    return manifest


def test_training_and_evaluation_images_are_disjoint_and_cover_the_shared_voc_images(fit, shared):
    from posthoc_csra.datasets import parse_dataset

    full = parse_dataset(fit.voc_spec(shared))
    every = [full.image_id(i) for i in range(len(full))]
    for seed in (0, 1):
        train_spec, eval_spec = fit.part_specs(shared, seed)
        train, held = parse_dataset(train_spec), parse_dataset(eval_spec)
        train_ids = {train.image_id(i) for i in range(len(train))}
        eval_ids = {held.image_id(i) for i in range(len(held))}
        assert not train_ids & eval_ids
        assert train_ids | eval_ids == set(every) and len(train) + len(held) == len(every)
        assert abs(len(train) - len(held)) <= 1
        assert train.classes == held.classes == full.classes and train.label_space == "voc2007"
    assert fit.part_specs(shared, 0) != fit.part_specs(shared, 1)


def test_the_checkpoint_loads_with_the_dataset_classes_and_the_manifest_says_voc2007(fitted, shared):
    import torch

    from posthoc_csra import load_model
    from posthoc_csra.datasets import VOC_CLASSES
    from posthoc_csra.models import class_names, weights_of
    from posthoc_csra.weights import read_manifest

    entry = read_manifest(fitted)[MODEL]
    assert entry.num_classes == 20 and entry.label_space == "voc2007" and entry.timm_model == MODEL
    assert entry.extra["train_spec"].startswith("part:1/2:0:voc2007:")
    assert entry.extra["eval_spec"].startswith("part:2/2:0:voc2007:")
    assert entry.extra["fit"]["n_train_images"] == N_TRAIN and entry.extra["fit"]["l2"] in (1e-2, 1e-1)
    assert entry.extra["license"] == read_manifest(shared / "weights" / "manifest.json")[MODEL].extra["license"]
    assert not Path(entry.file).resolve().is_relative_to(shared.resolve())
    net = load_model(MODEL, checkpoint=fitted)
    assert net.num_classes == 20 and class_names(net) == VOC_CLASSES
    assert weights_of(net)[1] != weights_of(load_model(MODEL, checkpoint=shared / "weights" / "manifest.json"))[1]
    backbone = load_model(MODEL, checkpoint=shared / "weights" / "manifest.json").state_dict()
    for key, value in net.state_dict().items():  # the backbone is frozen: only the classifier differs
        if not key.startswith("classifier."):
            assert torch.equal(value, backbone[key]), key


def test_the_fitted_head_fits_its_training_images(fit, fitted, shared):
    """Through the written checkpoint and bench's own preprocessing: the training loss is far below the
    all-zeros head's (ln 2 per class) and the training mAP far above a random ranking's."""
    import torch

    from posthoc_csra.datasets import parse_dataset
    from posthoc_csra.metrics import average_precision
    from posthoc_csra.options import ModelSource
    from posthoc_csra.prepare import prepare_model

    train = parse_dataset(fit.part_specs(shared, 0)[0])
    index = np.arange(N_TRAIN)
    prepared = prepare_model(MODEL, SIZE, ModelSource(checkpoint=fitted))
    x = torch.from_numpy(fit.pooled_features(prepared.net, prepared.preprocessing[True][0], train, index,
                                             workers=0, progress=False))
    with torch.inference_mode():
        logits = prepared.net.get_classifier()(x)
    y = torch.from_numpy(train.targets()[index]).double()
    ignore = train.ignore_mask()[index]
    valid = torch.from_numpy(~ignore).double()
    loss = float(fit.multilabel_loss(logits.double(), y, valid))
    zeros = float(fit.multilabel_loss(torch.zeros_like(y), y, valid))
    assert math.isclose(zeros, 20 * math.log(2), rel_tol=1e-9)
    assert loss < 0.5 * zeros
    ap = average_precision(logits.numpy(), train.targets()[index], ignore)
    positives = (train.targets()[index].astype(bool) & ~ignore).sum(0)
    chance = positives / (~ignore).sum(0)
    present = ~np.isnan(ap)
    assert np.nanmean(ap) > np.mean(chance[present]) + 0.3


def test_bench_evaluates_the_evaluation_part_on_all_20_classes_without_a_class_map(fitted, tmp_path):
    from posthoc_csra.classmaps import class_map_for
    from posthoc_csra.options import LoadOptions, ModelSource
    from posthoc_csra.bench import load_statistics, run_bench
    from posthoc_csra.weights import read_manifest

    spec = f"subset:6:0:{read_manifest(fitted)[MODEL].extra['eval_spec']}"
    loading, source = LoadOptions(batch_size=8, workers=0, progress=False), ModelSource(checkpoint=str(fitted))
    table = run_bench([MODEL], spec, loading=loading, img_sizes=[SIZE], source=source, cache_dir=tmp_path)
    assert table["error"].isna().all() and set(table["method"]) >= {"model", "csra"}
    stats, info, dataset = load_statistics(MODEL, spec, loading, img_size=SIZE, source=source, cache_dir=tmp_path)
    assert info["num_classes"] == 20 and info["exact"] and stats["logit_base"].shape == (6, 20)
    assert class_map_for(20, dataset) is None and "person" in dataset.classes
    assert table.attrs["backbone_images"] == 6


def test_a_rerun_reuses_the_checkpoint(fit, fitted, shared, capsys):
    before = fitted.read_bytes()
    again = fit.fit_heads(shared, fitted.parent, [MODEL], img_size=SIZE, seed=0, grid=(1e-2, 1e-1), folds=2,
                          max_images=N_TRAIN, workers=0, progress=False)
    assert again == fitted and again.read_bytes() == before
    assert f"{MODEL}: reusing" in capsys.readouterr().out


def test_a_head_that_is_not_pool_linear_is_refused(fit, shared, tmp_path):
    with pytest.raises(InputError, match=r"tf_mobilenetv3_small_100: not a pool→linear head .*mean of its "
                                         r"per-location logits is not its output"):
        fit.fit_heads(shared, tmp_path, ["tf_mobilenetv3_small_100"], img_size=SIZE, l2=0.1, max_images=4,
                      workers=0, progress=False)
    assert not list(tmp_path.iterdir())


def test_unknown_models_and_an_output_inside_shared_are_refused(fit, shared, tmp_path):
    with pytest.raises(InputError, match="not in .*manifest.json"):
        fit.fit_heads(shared, tmp_path, ["resnet50"], img_size=SIZE, l2=0.1)
    with pytest.raises(InputError, match="inside the shared assets"):
        fit.fit_heads(shared, shared / "weights" / "fixture", [MODEL], img_size=SIZE, l2=0.1)


def test_the_fit_masks_ignored_entries_and_beats_the_zero_head(fit):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = (x[:, :3] > 0).astype(np.uint8)  # class c is the sign of feature c
    ignore = rng.random(y.shape) < 0.2
    w, b, info = fit.fit_linear_head(x, y, ignore, 1e-2)
    assert w.shape == (3, 8) and b.shape == (3,)
    assert info["train_loss"] < 0.3 * 3 * math.log(2) and info["max_gradient"] < 1e-4
    flipped = np.where(ignore, 1 - y, y)  # labels of ignored entries do not matter
    w2, b2, _ = fit.fit_linear_head(x, flipped, ignore, 1e-2)
    np.testing.assert_array_equal(w, w2)
    np.testing.assert_array_equal(b, b2)
    w3, b3, _ = fit.fit_linear_head(x, y, ignore, 1e-2)  # deterministic
    np.testing.assert_array_equal(w, w3)
    alpha, scores = fit.cross_validate_l2(x, y, ignore, grid=(1e-3, 1.0), folds=3)
    assert alpha in (1e-3, 1.0) and set(scores) == {"0.001", "1.0"}
