"""``torch.export`` of the whole scorer: one program, any batch size, the eager scorer's scores on real images."""
import dataclasses
import math

import pytest
import torch

from posthoc_csra import cards, export
from posthoc_csra.options import ModelSource
from posthoc_csra.prepare import prepare_model
from posthoc_csra.models import weights_of
from posthoc_csra.errors import InputError
from posthoc_csra.scorer import CSRAScorer

IMG = 64


def _scorer(name, space, method="csra"):
    prepared = prepare_model(name, IMG, ModelSource(pretrained=False))
    transform, config = prepared.preprocessing[False]
    scorer = CSRAScorer(prepared.net, lam=0.5, heads=(1.0, math.inf), space=space, input_size=config["input_size"],
                        method=method)
    return scorer, transform


@pytest.mark.parametrize("name, space, method", [("resnet18", "logit", "csra"), ("test_vit", "prob", "csra"),
                                                 ("test_resnet", "prob", "max-pool")])
def test_exported_program_scores_equal_the_scorer_at_batch_1_and_3(name, space, method, photos, tmp_path):
    scorer, transform = _scorer(name, space, method)
    paths = export.check_images(photos)
    images = export.load_images(paths, transform)
    assert images.shape == (3, 3, IMG, IMG)
    result = export.export_scorer(scorer, images, tmp_path / "scorer.pt2", {"model": name}, image_names=["a"])
    assert result.check.batch_sizes == (1, 3) and result.check.max_abs_diff <= 1e-5

    module, meta = export.load_program(tmp_path / "scorer.pt2")  # one program, two batch sizes
    assert meta["model"] == name and meta["input_size"] == [3, IMG, IMG]
    with torch.no_grad():
        for batch in (1, 3):
            expected = scorer(images[:batch])
            assert torch.allclose(module(images[:batch]), expected, rtol=0, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["scorer.pt2"]  # no temporary file left


def test_a_program_that_disagrees_with_the_scorer_is_not_written(photos, tmp_path, monkeypatch):
    scorer, transform = _scorer("test_resnet", "logit")
    images = export.load_images(export.check_images(photos, limit=1), transform)
    load = export.load_program

    def shifted(path):
        module, meta = load(path)
        return (lambda x: module(x) + 1e-3), meta
    monkeypatch.setattr(export, "load_program", shifted)
    with pytest.raises(export.ExportCheckError, match="differ"):
        export.export_scorer(scorer, images, tmp_path / "scorer.pt2")
    assert list(tmp_path.iterdir()) == []


def _card(name="test_efficientnet"):
    """A card for ``name`` with random weights (bench's seed), as bench --save-cards writes it."""
    prepared = prepare_model(name, IMG, ModelSource(pretrained=False))
    return cards.ScorerCard(
        model=name, num_classes=prepared.net.num_classes, weights=cards.Weights(*weights_of(prepared.net)),
        preprocessing=cards.Preprocessing.from_data_config(prepared.preprocessing[True][1], full_frame=True),
        rule=cards.Rule("csra", "logit", (2.0, math.inf), 0.3), timm="test",
        chosen_with=cards.Choice("test-data", "0" * 64, val_mAP=50.0, test_mAP=None))


def test_export_card_exports_the_cards_scorer(photos, tmp_path):
    card = _card()
    path = cards.write_card(card, tmp_path / "card.json")
    result = export.export_card(path, tmp_path / "scorer.pt2", pretrained=False, images=photos / "parrot.jpg")
    assert result.check.images == ("parrot.jpg",) and result.check.max_abs_diff <= 1e-5
    _, meta = export.load_program(result.path)
    assert meta["card"] == cards.card_to_dict(card) and meta["card_file"] == cards.card_record(path)
    assert (meta["lam"], meta["heads"], meta["space"]) == (0.3, [2.0, "inf"], "logit")
    assert meta["preprocessing"] == card.preprocessing.to_dict() and meta["preprocessing"]["full_frame"]
    assert cards.Preprocessing.from_dict(meta["preprocessing"]) == card.preprocessing
    assert len(meta["classes"]) == card.num_classes


def test_export_card_refuses_a_card_for_other_weights(photos, tmp_path):
    card = _card()
    other = dataclasses.replace(card, weights=cards.Weights("elsewhere", "sha256:other-weights"))
    path = cards.write_card(other, tmp_path / "card.json")
    with pytest.raises(InputError, match="sha256:other-weights"):
        export.export_card(path, tmp_path / "scorer.pt2", pretrained=False, images=photos / "parrot.jpg")
    assert not (tmp_path / "scorer.pt2").exists()


def test_onnx_export_matches_the_scorer_at_batch_1_and_3(photos, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")  # the optional `onnx` extra (installed with `dev`)
    scorer, transform = _scorer("test_vit", "logit")
    images = export.load_images(export.check_images(photos), transform)
    result = export.export_scorer(scorer, images, tmp_path / "s.pt2", onnx=tmp_path / "s.onnx")
    assert result.onnx_check.batch_sizes == (1, 3) and result.onnx_check.max_abs_diff <= export.ONNX_ATOL
    session = onnxruntime.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for batch in (1, 3):
            (got,) = session.run(None, {session.get_inputs()[0].name: images[:batch].numpy()})
            assert torch.allclose(torch.from_numpy(got), scorer(images[:batch]), rtol=0, atol=export.ONNX_ATOL)


def test_onnx_without_its_packages_says_how_to_install_them(photos, tmp_path, monkeypatch):
    scorer, transform = _scorer("test_resnet", "logit")
    images = export.load_images(export.check_images(photos, limit=1), transform)
    real = export.importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None if name == "onnxscript" else real(name))
    with pytest.raises(InputError, match=r"onnxscript.*posthoc-csra\[onnx\]"):
        export.export_onnx(export.export_program(scorer, images), scorer, images, tmp_path / "s.onnx")
    assert not (tmp_path / "s.onnx").exists()


def _cli(*args):
    from click.testing import CliRunner

    from posthoc_csra.cli import main

    return CliRunner().invoke(main, ["-q", *map(str, args)])


def _weights_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "INFO" and "weights from" in r.getMessage()]


def test_bench_cards_then_score_and_export_with_the_card(shared, photos, tmp_path, caplog, monkeypatch):
    """bench --save-cards on real VOC images at 448 px → score --card on the shared photos → export --card; each
    command says once where the weights come from."""
    import pandas as pd

    from posthoc_csra import models
    from posthoc_csra.models import load_model, weights_of

    caplog.set_level("INFO", logger="posthoc_csra")
    monkeypatch.setattr(models, "_ANNOUNCED", set())  # as in a fresh process
    voc = f"subset:12:voc2007:{shared / 'data' / 'voc2007'}@trainval"
    result = _cli("bench", "-m", "tf_efficientnet_lite0", "-d", voc, "--lam", "0,0.5,2", "--heads", "1,4",
                  "--img-size", "448", "--select-on", "val", "--save-cards", tmp_path / "cards",
                  "--card-methods", "model,csra", "--cache-dir", tmp_path / "cache", "--workers", "0", "--no-progress")
    assert result.exit_code == 0, result.output
    assert len(_weights_lines(caplog)) == 1, _weights_lines(caplog)
    (path,) = (tmp_path / "cards").iterdir()
    assert path.name == "tf_efficientnet_lite0__subset12_voc2007@trainval.json"  # no stray "_"
    card = cards.read_card(path)
    assert f"wrote card {path}" in result.output and "at 448 px, full frame:" in result.output
    assert card.model == "tf_efficientnet_lite0" and card.chosen_with.dataset == "subset12(voc2007@trainval)"
    assert card.preprocessing.full_frame and card.preprocessing.img_size == 448
    assert card.chosen_with.test_mAP is not None
    assert card.weights.identity == weights_of(load_model("tf_efficientnet_lite0"))[1]  # the build size is not in it

    for command in ("score", "export"):
        monkeypatch.setattr(models, "_ANNOUNCED", set())
        caplog.clear()
        args = (["score", photos, "-o", tmp_path / "scores.csv", "--all-scores", "--workers", "0", "--no-progress"]
                if command == "score" else ["export", "-o", tmp_path / "scorer.pt2", "--check-images", photos])
        result = _cli(*args, "--card", path)
        assert result.exit_code == 0, result.output
        assert len(_weights_lines(caplog)) == 1, (command, _weights_lines(caplog))
        assert "at 448 px, full frame" in result.output
    table = pd.read_csv(tmp_path / "scores.csv")
    record = cards.card_record(path)
    assert (table["card"] == record["card"]).all() and (table["card_sha256"] == record["card_sha256"]).all()
    assert (table["lam"] == card.lam).all() and (table["space"] == card.rule.space).all()
    assert (table["img_size"] == 448).all() and (table["preprocessing"] == "full frame").all()

    result = _cli("score", photos, "--card", path, "--lam", "0.3")
    assert result.exit_code == 2 and "drop --lam" in result.output
    result = _cli("score", photos, "--card", path, "--center-crop")
    assert result.exit_code == 2 and "drop --full-frame/--center-crop" in result.output
    result = _cli("score", photos, "--card", path, "--random-weights", "--workers", "0", "--no-progress")
    assert result.exit_code == 1 and card.weights.identity in result.output and "Fix:" in result.output
    module, meta = export.load_program(tmp_path / "scorer.pt2")
    assert meta["card_file"] == record and meta["card"] == cards.card_to_dict(card)
    transform = card.preprocessing.transform()
    images = export.load_images(export.check_images(photos), transform)
    scorer = CSRAScorer.from_card(card, load_model("tf_efficientnet_lite0"))
    class_columns = table.columns[-card.num_classes:]
    with torch.no_grad():
        scores = scorer(images)
        assert torch.allclose(module(images), scores, rtol=0, atol=1e-5)
    scored = table.set_index("image").loc[[p.name for p in export.check_images(photos)], class_columns]
    assert torch.allclose(torch.tensor(scored.to_numpy(), dtype=torch.float32), scores, rtol=0, atol=1e-4)


@pytest.mark.parametrize("flag", [None, "--center-crop"])
def test_export_command_with_model_and_rule_options(photos, tmp_path, flag):
    result = _cli("export", "-m", "test_resnet", "--random-weights", "--img-size", IMG, "--lam", "0.3", "--heads", "2",
                  "--space", "prob", "-o", tmp_path / "s.pt2", "--check-images", photos / "parrot.jpg",
                  *([flag] if flag else []))
    assert result.exit_code == 0, result.output
    assert "checked against the eager scorer on parrot.jpg at batch 1 and 3" in result.output
    _, meta = export.load_program(tmp_path / "s.pt2")
    assert (meta["model"], meta["lam"], meta["heads"], meta["space"]) == ("test_resnet", 0.3, [1.0, "inf"], "prob")
    assert meta["input_size"] == [3, IMG, IMG] and meta["weights"]["label"] == "random"
    preprocessing = cards.Preprocessing.from_dict(meta["preprocessing"])  # what README says the program records
    assert preprocessing.img_size == IMG and preprocessing.full_frame == (flag is None)
    assert f"at {preprocessing.describe()}, csra" in result.output
    assert preprocessing.mode == ("full frame" if flag is None else "crop 0.95 (center)")
    result = _cli("export", "-m", "test_resnet", "--random-weights", "-o", tmp_path / "s.onnx")
    assert result.exit_code == 2 and "must end in .pt2" in result.output
