"""Scorer cards: the val choice of a bench table kept as JSON, read back, and applied only to the same weights."""
import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from posthoc_csra import bench, cards
from posthoc_csra.baselines import BASELINES
from posthoc_csra.methods import METHODS
from posthoc_csra.bench import run_bench
from posthoc_csra.models import weights_of
from posthoc_csra.options import EvalOptions, LoadOptions, ModelSource
from posthoc_csra.errors import InputError, MissingInputError
from posthoc_csra.models import load_model
from posthoc_csra.scorer import CSRAScorer
from posthoc_csra.choices import HEAD_SETS

IMG = 64
MODEL = "test_efficientnet"
SOURCE = ModelSource(pretrained=False)
LOADING = LoadOptions(workers=0, progress=False)


@pytest.fixture(scope="module")
def bench_table(tmp_path_factory):
    """A real ``run_bench(select_on="val")`` table: random-weights model on 10 ImageNet-ReaL-named images."""
    root = tmp_path_factory.mktemp("cards")
    folder = root / "inet"
    folder.mkdir()
    for i in range(2, 12):  # val images 2.. all have ReaL labels
        pixels = np.random.default_rng(i).integers(0, 256, (IMG + 8, IMG + 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"ILSVRC2012_val_{i:08d}.png")
    spec = f"imagenet-real:{folder}"
    table = run_bench(MODEL, spec, EvalOptions(lams="0,0.5,2", heads="1,4", select_on="val"), LOADING,
                      source=SOURCE, cache_dir=root / "cache", img_sizes=[IMG])
    assert table["error"].isna().all(), table["error"].dropna().tolist()
    return table


@pytest.fixture(scope="module")
def card(bench_table):
    (only,) = bench.cards_from_table(bench_table, SOURCE, LOADING, methods=("model", "csra"))
    return only


@pytest.fixture(scope="module")
def model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # as bench loads random weights
        return load_model(MODEL, pretrained=False, img_size=IMG)


def _csra_card(card, lam=0.5, space="prob", temperatures=(1.0, math.inf)):
    return dataclasses.replace(card, rule=cards.Rule("csra", space, temperatures, lam))


def _row(table, card, split):
    """The table row a card's choice came from."""
    rows = table[(table["split"] == split) & (table["method"] == card.rule.method)
                 & (table["space"] == card.rule.space)]
    if card.rule.method == "csra":
        rows = rows[(rows["lam"] == card.rule.lam) & (rows["heads"] == len(card.rule.temperatures))]
    return rows.iloc[0]


def test_card_keeps_the_best_validation_choice_and_its_test_map(bench_table, card):
    val = bench_table[(bench_table["split"] == "val") & bench_table["selected"]]
    assert card.chosen_with.val_mAP == val[val["method"].isin(["model", "csra"])]["mAP"].max()
    assert card.rule.method in ("model", "csra")
    chosen = _row(bench_table, card, "val")
    assert chosen["selected"] and chosen["mAP"] == card.chosen_with.val_mAP
    assert card.chosen_with.test_mAP == _row(bench_table, card, "test")["mAP"]
    assert (card.chosen_with.n_val, card.chosen_with.n_test) == (5, 5)
    assert card.chosen_with.dataset == "imagenet-real" and len(card.chosen_with.fingerprint) == 64
    assert card.model == MODEL and card.num_classes == 1000


def _table(rows):
    base = dict(model="m", dataset="d", dataset_spec="csv:d.csv", img_size=64, split="val", space="logit",
                heads=pd.NA, lam=np.nan, selected=True, error=pd.NA)
    return pd.DataFrame([{**base, **row} for row in rows])


def test_chosen_rows_prefer_the_simpler_method_on_ties_and_pair_the_test_row():
    table = _table([dict(method="max-pool", mAP=50.0), dict(method="csra", heads=1, lam=0.5, mAP=50.0),
                    dict(method="model", mAP=50.0), dict(method="csra", heads=4, lam=0.5, mAP=49.0),
                    dict(method="model", split="test", mAP=40.0),
                    dict(method="csra", heads=1, lam=0.5, split="test", mAP=41.0)])
    ((best, test),) = bench.chosen_rows(table, METHODS)
    assert best["method"] == "model" and test["mAP"] == 40.0
    ((best, test),) = bench.chosen_rows(table, ["csra", "max-pool"])
    assert (best["method"], best["heads"], test["mAP"]) == ("csra", 1, 41.0)
    ((best, test),) = bench.chosen_rows(table, ["max-pool"])
    assert best["method"] == "max-pool" and test is None  # no test row of that choice


def test_card_records_the_preprocessing_bench_used(card, model):
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    p = card.preprocessing
    assert p.img_size == IMG and p.full_frame is False  # imagenet-real: timm's centre crop
    assert (p.crop_pct, p.interpolation, p.mean, p.std) == (config["crop_pct"], config["interpolation"],
                                                            tuple(config["mean"]), tuple(config["std"]))
    assert p.transform()(Image.new("RGB", (90, 70))).shape == (3, IMG, IMG)


def test_card_json_round_trip_writes_inf_as_text(card, tmp_path):
    card = _csra_card(card, temperatures=(1.0, 2.0, math.inf))
    (path,) = cards.write_cards([card], tmp_path)
    assert path.name == f"{MODEL}__imagenet-real.json"
    data = json.loads(path.read_text())
    assert data["heads"] == [1.0, 2.0, "inf"] and data["method"] == "csra" and data["version"] == cards.CARD_VERSION
    assert data["dataset"]["name"] == "imagenet-real" and data["timm"] and data["weights"]["identity"]
    assert cards.read_card(path) == card
    record = cards.card_record(path)
    assert record["card"] == str(path) and len(record["card_sha256"]) == 64


def test_a_t1_card_round_trips_and_is_not_heads_1(card, model, tmp_path):
    """T = 1 alone (the official CSRA code's MHA(num_heads=1), ``--heads T1``) is written as [1], this library's
    heads=1 as ["inf"]; both read back as what they are."""
    t1 = _csra_card(card, lam=0.5, temperatures=(1.0,))
    (path,) = cards.write_cards([t1], tmp_path / "t1")
    data = json.loads(path.read_text())
    assert data["heads"] == [1.0] and cards.read_card(path) == t1 and "T={1}" in t1.describe()
    scorer = CSRAScorer.from_card(path, model)
    assert scorer.heads == (1.0,)
    x = torch.randn(2, 3, IMG, IMG)
    assert torch.equal(scorer(x), CSRAScorer(model, lam=0.5, heads="T1", space=t1.rule.space)(x))
    one = _csra_card(card, lam=0.5, temperatures=(math.inf,))
    (path,) = cards.write_cards([one], tmp_path / "one")
    assert json.loads(path.read_text())["heads"] == ["inf"] and cards.read_card(path) == one
    assert "T={∞}" in one.describe()


@pytest.mark.parametrize("heads, temperatures", [("T1", (1.0,)), ("T1+inf", (1.0, math.inf)), (1, (math.inf,)),
                                                 ("4", HEAD_SETS[4]), ([1, "inf"], (1.0, math.inf))])
def test_a_hand_written_card_may_name_heads_in_the_one_spelling(card, tmp_path, heads, temperatures):
    data = dict(cards.card_to_dict(_csra_card(card)), heads=heads)
    path = tmp_path / "hand.json"
    path.write_text(json.dumps(data))
    assert cards.read_card(path).rule.temperatures == temperatures


def test_chosen_rows_tell_heads_1_from_t1_by_the_temperatures_column():
    table = _table([dict(method="csra", heads=1, temperatures="inf", lam=0.5, mAP=49.0),
                    dict(method="csra", heads=1, temperatures="1", lam=0.5, mAP=50.0),
                    dict(method="csra", heads=1, temperatures="inf", lam=0.5, split="test", mAP=40.0),
                    dict(method="csra", heads=1, temperatures="1", lam=0.5, split="test", mAP=41.0)])
    ((best, test),) = bench.chosen_rows(table, ["csra"])
    assert (best["temperatures"], test["mAP"]) == ("1", 41.0)
    assert bench._temperatures(best) == (1.0,) and bench._temperatures(dict(best, temperatures="inf")) == (math.inf,)
    # a table from before the temperatures column: the heads cell alone (a count is the paper's set)
    assert bench._temperatures({"heads": 1}) == (math.inf,)
    assert bench._temperatures({"heads": "1,inf"}) == (1.0, math.inf)


def test_bench_heads_t1_rows_and_card(tmp_path):
    """``bench --heads T1`` on a tiny fixture: every CSRA row is one head at T = 1, and so is its card."""
    folder = tmp_path / "inet"
    folder.mkdir()
    for i in range(2, 10):  # val images 2.. all have ReaL labels
        pixels = np.random.default_rng(i).integers(0, 256, (IMG + 8, IMG + 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"ILSVRC2012_val_{i:08d}.png")
    result = _cli("bench", "-m", MODEL, "--random-weights", "-d", f"imagenet-real:{folder}", "--img-size", IMG,
                  "--lam", "0,0.5", "--heads", "T1", "--space", "logit", "--select-on", "val", "--workers", 0,
                  "--no-progress", "--cache-dir", tmp_path / "cache", "-o", tmp_path / "t.csv",
                  "--save-cards", tmp_path / "cards", "--card-methods", "csra")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "t.csv", dtype={"temperatures": str})
    csra = table[table["method"] == "csra"]
    assert len(csra) == 2 * 2 and (csra["temperatures"] == "1").all() and (csra["heads"] == 1).all()
    assert table[table["method"] != "csra"]["temperatures"].isna().all()
    assert "| heads | temperatures |" in (tmp_path / "t.md").read_text()
    (path,) = (tmp_path / "cards").iterdir()
    card = cards.read_card(path)
    assert card.rule.temperatures == (1.0,) and json.loads(path.read_text())["heads"] == [1.0]


def test_scorer_from_card_is_the_scorer_the_card_describes(card, model):
    chosen = _csra_card(card, lam=0.5, space="prob", temperatures=(1.0, math.inf))
    scorer = CSRAScorer.from_card(chosen, model)
    assert (scorer.lam, scorer.space, scorer.heads) == (0.5, "prob", (1.0, math.inf))
    x = torch.randn(2, 3, IMG, IMG)
    expected = CSRAScorer(model, lam=0.5, heads=(1.0, math.inf), space="prob")(x)
    assert torch.equal(scorer(x), expected)


def test_model_method_card_is_lambda_zero(card, model):
    plain = dataclasses.replace(card, rule=cards.Rule("model", "logit", (math.inf,), 0.0))
    scorer = CSRAScorer.from_card(plain, model)
    x = torch.randn(1, 3, IMG, IMG)
    assert scorer.lam == 0 and torch.equal(scorer(x), model(x))


def test_card_for_other_weights_is_refused(card, tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # other random weights than bench's seed 0
        other = load_model(MODEL, pretrained=False, img_size=IMG)
    (path,) = cards.write_cards([card], tmp_path)
    with pytest.raises(InputError) as err:
        CSRAScorer.from_card(path, other)
    message = str(err.value)
    assert card.weights.identity in message and weights_of(other)[1] in message
    assert str(path) in message and f"Fix: load {MODEL} with the weights the card names, random" in message
    assert f"load_model({MODEL!r}, checkpoint=FILE)" in message and "the input size does not matter" in message


def _file_card(tmp_path, name, size, full_frame=True):
    """A card for ``name`` at ``size`` px made from weights saved to a file, as bench makes one, and the file."""
    from posthoc_csra.prepare import prepare_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        weights = load_model(name, pretrained=False).state_dict()
    path = tmp_path / f"{name}.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in weights.items()}, path)
    prepared = prepare_model(name, size, ModelSource(checkpoint=path))
    card = cards.ScorerCard(
        model=name, num_classes=prepared.net.num_classes, weights=cards.Weights(*weights_of(prepared.net)),
        preprocessing=cards.Preprocessing.from_data_config(prepared.preprocessing[full_frame][1], full_frame),
        rule=cards.Rule("csra", "prob", (1.0, math.inf), 0.2), timm="test",
        chosen_with=cards.Choice("voc2007@trainval", "0" * 64, val_mAP=80.0, test_mAP=79.0))
    return card, path, prepared.net


def test_a_448_card_runs_on_a_cnn_loaded_at_its_own_size(tmp_path):
    """The same weights bytes are the same weights: a card made at 448 px is accepted for load_model(name), and
    the scorer is built for, and runs at, the card's 448 px."""
    card, path, built_at_448 = _file_card(tmp_path, "resnet10t", 448)
    plain = load_model("resnet10t", checkpoint=path)
    assert plain.pretrained_cfg["input_size"][-1] != 448
    scorer = CSRAScorer.from_card(card, plain)
    assert scorer.probe_locations == (448 // 32) ** 2 and card.preprocessing.transform()(
        Image.new("RGB", (500, 300))).shape == (3, 448, 448)
    x = torch.randn(2, 3, 448, 448)
    with torch.no_grad():
        expected = CSRAScorer(built_at_448, lam=0.2, heads=(1.0, math.inf), space="prob", input_size=(3, 448, 448))(x)
        assert torch.allclose(scorer(x), expected, atol=1e-6)


def test_a_448_card_on_the_shared_lite0_weights(shared):
    """The reported case: a card made at 448 px for tf_efficientnet_lite0, applied to load_model(name)."""
    from posthoc_csra.prepare import prepare_model

    prepared = prepare_model("tf_efficientnet_lite0", 448)
    card = cards.ScorerCard(
        model="tf_efficientnet_lite0", num_classes=1000, weights=cards.Weights(*weights_of(prepared.net)),
        preprocessing=cards.Preprocessing.from_data_config(prepared.preprocessing[True][1], True),
        rule=cards.Rule("csra", "prob", HEAD_SETS[4], 0.1), timm="test",
        chosen_with=cards.Choice("voc2007@trainval", "0" * 64, val_mAP=80.7, test_mAP=80.7))
    scorer = CSRAScorer.from_card(card, load_model("tf_efficientnet_lite0"))
    assert scorer.probe_locations == 14 * 14 and card.preprocessing.describe() == "448 px, full frame"


def test_a_token_model_built_for_another_size_gets_a_fix_that_works(tmp_path):
    """vit_tiny_patch16_224 takes only the size it was built for (no dynamic_img_size)."""
    card, path, _ = _file_card(tmp_path, "vit_tiny_patch16_224", 96)
    with pytest.raises(InputError) as err:
        CSRAScorer.from_card(card, load_model("vit_tiny_patch16_224", checkpoint=path))
    message = str(err.value)
    assert "built for 224×224 px" in message and "load_model('vit_tiny_patch16_224', img_size=96" in message
    scorer = CSRAScorer.from_card(card, load_model("vit_tiny_patch16_224", checkpoint=path, img_size=96))  # the fix
    assert scorer.probe_locations == (96 // 16) ** 2


def test_card_file_names_have_no_stray_underscore(card):
    odd = dataclasses.replace(card, chosen_with=dataclasses.replace(card.chosen_with,
                                                                    dataset="subset12(voc2007@trainval)"))
    assert odd.file_name() == f"{MODEL}__subset12_voc2007@trainval.json"
    assert card.describe().startswith(f"{MODEL} (random) at {IMG} px, crop ")


def test_baseline_choice_is_kept_and_scored_by_the_baseline(bench_table, model):
    val = bench_table[(bench_table["split"] == "val") & bench_table["selected"]]
    best_baseline = val[val["method"].isin(list(BASELINES))]["mAP"].max()
    (card,) = bench.cards_from_table(bench_table, SOURCE, LOADING, methods=list(BASELINES))
    assert card.rule.method in BASELINES and card.chosen_with.val_mAP == best_baseline and card.lam == 0
    scorer = CSRAScorer.from_card(card, model)
    x = torch.randn(2, 3, IMG, IMG)
    expected = CSRAScorer(model, space=card.rule.space, method=card.rule.method)(x)
    assert scorer.method == card.rule.method and torch.equal(scorer(x), expected)


def test_table_without_a_validation_choice_is_refused(bench_table):
    with pytest.raises(InputError, match="--select-on val"):
        bench.cards_from_table(bench_table.assign(split="all", selected=pd.NA))


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("format"), "not a posthoc-csra scorer card"),
    (lambda d: d.update(version=cards.CARD_VERSION + 1), "version"),
    (lambda d: d.pop("lam"), "malformed"),
    (lambda d: d.update(method="magic"), "unknown method"),
    (lambda d: d.update(space="rank"), "unknown space"),
    (lambda d: d.update(heads=[0]), "positive"),
])
def test_bad_cards_are_refused(card, tmp_path, edit, match):
    data = cards.card_to_dict(card)
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=match):
        cards.read_card(path)


def test_missing_or_non_json_card_is_refused(tmp_path):
    with pytest.raises(MissingInputError, match="no such file"):
        cards.read_card(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        cards.read_card(tmp_path / "x.json")


def _cli(*args):
    from click.testing import CliRunner

    from posthoc_csra.cli import main

    return CliRunner().invoke(main, ["-q", *map(str, args)])


def test_bench_save_cards_needs_a_validation_choice_and_known_methods(tmp_path):
    result = _cli("bench", "-m", MODEL, "-d", "csv:labels.csv", "--save-cards", tmp_path / "cards")
    assert result.exit_code == 2 and "add --select-on val" in result.output
    result = _cli("bench", "-m", MODEL, "-d", "csv:labels.csv", "--select-on", "val", "--save-cards", tmp_path,
                  "--card-methods", "csra,magic")
    assert result.exit_code == 2 and "--card-methods: bad method list" in result.output
    assert not (tmp_path / "cards").exists()
