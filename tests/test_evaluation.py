"""``evaluate_stats``: metric rows from cached statistics, checked against direct computations."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from test_cache import IMG, TinyImages

from posthoc_csra.options import EvalOptions
from posthoc_csra import evaluation
from posthoc_csra.classmaps import class_map_for
from posthoc_csra.datasets import VOC_CLASSES, split_indices
from posthoc_csra.errors import InputError
from posthoc_csra.evaluation import COLUMN_HELP, COLUMNS, TOPK, evaluate_stats
from posthoc_csra.metrics import average_precision, best_f1_threshold, f1_scores, topk_f1_scores
from posthoc_csra.models import load_model
from posthoc_csra.scorer import CSRAScorer
from posthoc_csra.prepare import data_transform
from posthoc_csra.choices import STORED_HEADS

TOP_C, TOP_O = f"CF1@top{TOPK}", f"OF1@top{TOPK}"


def _map(scores, t, ign):
    return 100 * float(np.nanmean(average_precision(scores, t, ign)))


def _row(df, **where):
    mask = np.ones(len(df), bool)
    for key, value in where.items():
        mask &= (df[key] == value).to_numpy()
    assert mask.sum() == 1, where
    return df[mask].iloc[0]


@pytest.fixture(scope="module")
def tiny_batch():
    torch.manual_seed(0)
    net = load_model("test_efficientnet", pretrained=False)
    transform, config = data_transform(net, IMG)
    ds = TinyImages(n=16)
    x = torch.stack([transform(ds[i][0]) for i in range(len(ds))])
    scorer = CSRAScorer(net, input_size=config["input_size"])
    stats = {k: v.numpy() for k, v in scorer.statistics(x).items()}
    return net, x, ds, stats


def test_rows_equal_direct_scorer_map_and_top3_f1(tiny_batch):
    net, x, ds, stats = tiny_batch
    t, ign = ds.targets(), ds.ignore_mask()
    df = evaluate_stats(stats, t, ign, EvalOptions([0.1, 0.5], [1, 4, (2.0, math.inf)], ["logit", "prob"]))
    csra = df[df["method"] == "csra"]
    assert len(csra) == 3 * 2 * 3 and set(csra["lam"]) == {0.0, 0.1, 0.5}  # λ=0 added
    assert (df["n_classes"] == ((t > 0) & ~ign).any(0).sum()).all() and (df["n_images"] == 16).all()
    with torch.no_grad():
        for space, heads, lam in [("logit", 1, 0.5), ("prob", 4, 0.1), ("logit", (2.0, math.inf), 0.1),
                                  ("prob", 1, 0.0)]:
            direct = CSRAScorer(net, lam=lam, heads=heads, space=space, input_size=x.shape[1:])(x).numpy()
            n_heads, label = {1: (1, "inf"), 4: (4, "1,2,4,inf")}.get(heads, (2, "2,inf"))  # how many; which
            row = _row(df, method="csra", space=space, heads=n_heads, temperatures=label, lam=lam)
            assert row["mAP"] == pytest.approx(_map(direct, t, ign), abs=1e-6)
            f1 = topk_f1_scores(direct, t, 3, ign, positive_classes=True)
            assert row[TOP_C] == pytest.approx(100 * f1["CF1"]) and row[TOP_O] == pytest.approx(100 * f1["OF1"])
    for space in ("logit", "prob"):
        model = _row(df, method="model", space=space)
        assert model["delta"] == 0 and pd.isna(model["heads"]) and math.isnan(model["lam"])
        for _, zero in csra[(csra["space"] == space) & (csra["lam"] == 0)].iterrows():  # λ=0 is the model
            assert zero[["mAP", TOP_C, TOP_O]].tolist() == model[["mAP", TOP_C, TOP_O]].tolist()
        for _, row in df[df["space"] == space].iterrows():
            assert row["delta"] == pytest.approx(row["mAP"] - model["mAP"])
    assert df["selected"].isna().all() and (df["split"] == "all").all()
    assert df[["threshold", "CF1@t", "OF1@t"]].isna().all().all()  # no val split: no threshold, no F1@t


def test_heads_1_is_t_inf_and_t1_is_t_1_alone(tiny_batch):
    """Both are one head: the heads column says how many, the temperatures column which; each row is the
    scorer at that head set, and T1 (the official CSRA code's MHA(num_heads=1)) is not heads=1."""
    net, x, ds, stats = tiny_batch
    t, ign = ds.targets(), ds.ignore_mask()
    df = evaluate_stats(stats, t, ign, EvalOptions([0.5], [1, "T1", "T1+inf", (1.0, 2.0, 4.0, math.inf)],
                                                    ["logit", "prob"]))
    csra = df[(df["method"] == "csra") & (df["lam"] == 0.5)]
    assert csra.groupby("space")["temperatures"].agg(list).to_dict() == {
        space: ["inf", "1", "1,inf", "1,2,4,inf"] for space in ("logit", "prob")}
    assert csra.groupby("space")["heads"].agg(list).to_dict() == {space: [1, 1, 2, 4] for space in ("logit", "prob")}
    assert df[df["method"] != "csra"]["temperatures"].isna().all()
    with torch.no_grad():
        for space in ("logit", "prob"):
            for heads, label in [(1, "inf"), ("T1", "1"), ((1.0,), "1"), ("T1+inf", "1,inf")]:
                direct = CSRAScorer(net, lam=0.5, heads=heads, space=space, input_size=x.shape[1:])(x).numpy()
                row = _row(csra, space=space, temperatures=label)
                assert row["mAP"] == pytest.approx(_map(direct, t, ign), abs=1e-6), (space, heads)
            one, t1 = _row(csra, space=space, temperatures="inf"), _row(csra, space=space, temperatures="1")
            assert one["heads"] == t1["heads"] == 1 and one["mAP"] != t1["mAP"]


def _synthetic_stats(n=40, c=1000, seed=0, baselines=("max-pool",)):
    """Softmax-model-like statistics: per space base (N, C), att (N, 8, C) and baseline scores."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)).astype(np.float32) * 3
    prob = torch.from_numpy(logits).softmax(1).numpy()
    out = {"logits": logits, "logit_base": logits, "prob_base": prob}
    for space, scale in (("logit", 1.0), ("prob", 1e-3)):
        out[f"{space}_att"] = (rng.random((n, len(STORED_HEADS), c)) * scale).astype(np.float32)
        out[f"{space}_mean"] = out[f"{space}_att"].mean(1)
        for method in baselines:
            out[f"{space}@{method}"] = out[f"{space}_base"] + out[f"{space}_att"][:, -1]
        out[f"{space}@avgmax-pool"] = np.full((n, c), np.nan, np.float32)  # does not apply to this model
    return out


@pytest.mark.parametrize("pool", ["max", "sum"])
def test_class_mapped_rows_pool_members_as_the_space_says(pool):
    ds = TinyImages(n=40, classes=VOC_CLASSES, label_space="voc2007")
    stats = _synthetic_stats()
    cmap = class_map_for(1000, ds)
    t, ign, mapped = ds.targets(), ds.ignore_mask(), cmap.mapped
    df = evaluate_stats(stats, t, ign, EvalOptions([0.5], [1, 8], ["logit", "prob"], pool=pool), class_map=cmap)
    assert set(df[df["space"] == "prob"]["pool"]) == {pool} and set(df[df["space"] == "logit"]["pool"]) == {"max"}
    members = [m for m in cmap.members if m]
    tm, im = t[:, mapped], ign[:, mapped]

    def pooled(s, space):
        reduce = np.sum if (space == "prob" and pool == "sum") else np.max  # logit space always pools by max
        return np.stack([reduce(s[:, m], axis=1) for m in members], 1)

    for space in ("logit", "prob"):
        s = stats[f"{space}_base"] + np.float32(0.5 / 8) * stats[f"{space}_att"].sum(1)
        row = _row(df, method="csra", space=space, lam=0.5, heads=8)
        assert row["mAP"] == pytest.approx(_map(pooled(s, space), tm, im), abs=1e-6)
        assert row["n_classes"] == ((tm > 0) & ~im).any(0).sum()
        top = topk_f1_scores(pooled(s, space), tm, 3, im, positive_classes=True)
        assert row[TOP_O] == pytest.approx(100 * top["OF1"], abs=1e-9)
        base = _row(df, method="model", space=space)
        assert base["mAP"] == pytest.approx(_map(pooled(stats[f"{space}_base"], space), tm, im), abs=1e-6)
        maxpool = _row(df, method="max-pool", space=space)
        assert maxpool["mAP"] == pytest.approx(_map(pooled(stats[f"{space}@max-pool"], space), tm, im), abs=1e-6)


def _choice(row):
    return tuple(None if pd.isna(row[k]) else row[k] for k in ("heads", "lam"))


def test_methods_selection_and_val_thresholds():
    ds = TinyImages(n=60, n_classes=1000, seed=1)
    t, ign = ds.targets() > 0, ds.ignore_mask()
    stats = _synthetic_stats(n=60, seed=1, baselines=("max-pool", "test-time-pool"))
    # logit: the attention of positives is pushed up, so some λ > 0 wins; prob: no attention at all, so every
    # heads × λ ranks exactly like the model (a tie, won by λ = 0 with 1 head)
    stats["logit_att"] += stats["logit_att"].max() * t[:, None, :].astype(np.float32) * 0.3
    stats["prob_att"][:] = 0
    lams = [0.0, 0.2, 0.5, 1.0]
    val_idx, test_idx = split_indices(60, 0.5, 3)
    df = evaluate_stats(stats, t, ign, EvalOptions(lams, [1, 8], ["logit", "prob"], select_on="val"),
                        split=(val_idx, test_idx))

    # one row per split for model and each applicable baseline; csra for every heads × λ
    counts = df.groupby(["space", "method"]).size().to_dict()
    assert counts == {(s, m): n for s in ("logit", "prob") for m, n in
                      (("model", 2), ("csra", 2 * 2 * 4), ("max-pool", 2), ("test-time-pool", 2))}
    others = df[df["method"] != "csra"]
    assert others["heads"].isna().all() and others["lam"].isna().all()
    assert (df[df["split"] == "val"]["n_images"] == 30).all() and (df[df["split"] == "test"]["n_images"] == 30).all()

    val = df[df["split"] == "val"]
    for (space, method), g in val.groupby(["space", "method"]):
        chosen = g[g["selected"]]
        assert len(chosen) == 1, (space, method)
        # the best val mAP; ties → smaller λ, then fewer heads
        n_heads = g["heads"].map(lambda h: 0 if pd.isna(h) else int(h))
        expected = g.assign(n_heads=n_heads).sort_values(["mAP", "lam", "n_heads"], ascending=[False, True, True])
        assert chosen.index[0] == expected.index[0]
        test = df[(df["split"] == "test") & (df["space"] == space) & (df["method"] == method) & df["selected"]]
        assert len(test) == 1 and _choice(test.iloc[0]) == _choice(chosen.iloc[0])
    selected = df[(df["method"] == "csra") & df["selected"]].set_index(["space", "split"])
    assert _choice(selected.loc[("prob", "test")]) == (1, 0.0)
    assert selected.loc[("logit", "test"), "lam"] > 0 and selected.loc[("logit", "test"), "delta"] != 0

    # thresholds: chosen on the val scores of the same configuration, applied unchanged to test
    for space, method, heads, lam in [("logit", "csra", 8, 0.5), ("prob", "csra", 1, 0.2), ("logit", "model", None, None),
                                      ("prob", "test-time-pool", None, None)]:
        if method == "csra":
            h = len(STORED_HEADS) if heads == 8 else 1
            att = stats[f"{space}_att"][:, :].sum(1) if heads == 8 else stats[f"{space}_att"][:, -1]
            s = stats[f"{space}_base"] + np.float32(lam / h) * att
            rows = df[(df["method"] == method) & (df["space"] == space) & (df["heads"] == heads) & (df["lam"] == lam)]
        else:
            s = stats[f"{space}_base"] if method == "model" else stats[f"{space}@{method}"]
            rows = df[(df["method"] == method) & (df["space"] == space)]
        threshold = best_f1_threshold(s[val_idx], t[val_idx], ign[val_idx])
        assert len(rows) == 2 and (rows["threshold"] == threshold).all()
        for split_name, idx in (("val", val_idx), ("test", test_idx)):
            row = rows[rows["split"] == split_name].iloc[0]
            at = f1_scores(s[idx], t[idx], threshold, ign[idx], positive_classes=True)
            assert row["CF1@t"] == pytest.approx(100 * at["CF1"]) and row["OF1@t"] == pytest.approx(100 * at["OF1"])
            assert row["mAP"] == pytest.approx(_map(s[idx], t[idx], ign[idx]), abs=1e-6)
    assert df[["threshold", "CF1@t", "OF1@t", TOP_C, TOP_O]].notna().all().all()
    assert df["threshold"].nunique() > 4  # one threshold per configuration, not a fixed default


def test_select_on_val_default_split_and_disjoint_halves():
    ds = TinyImages(n=40, n_classes=1000)
    df = evaluate_stats(_synthetic_stats(), ds.targets(), ds.ignore_mask(),
                        EvalOptions([0.0, 0.2], [1], ["prob"], select_on="val", val_fraction=0.5, split_seed=3))
    direct = evaluate_stats(_synthetic_stats(), ds.targets(), ds.ignore_mask(),
                            EvalOptions([0.0, 0.2], [1], ["prob"], select_on="val"), split=split_indices(40, 0.5, 3))
    pd.testing.assert_frame_equal(df, direct)
    assert set(df["split"]) == {"val", "test"} and df["selected"].notna().all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(pool="mean"), "pool"),
    (dict(select_on="test"), "select_on"),
    (dict(heads=[(0.5,)]), "statistics"),
    (dict(spaces=["logits"]), "score space"),
    (dict(lams=[-0.1]), "λ"),
])
def test_bad_options_are_input_errors(kwargs, match):
    ds = TinyImages(n=10, n_classes=1000)
    args = dict(lams=[0.1], heads=[1], spaces=["logit"]) | kwargs
    with pytest.raises(InputError, match=match):  # the option object refuses them before any statistic is read
        evaluate_stats(_synthetic_stats(n=10), ds.targets(), ds.ignore_mask(), EvalOptions(**args))
    stats = _synthetic_stats(n=10)
    del stats["prob_att"]
    with pytest.raises(InputError, match="prob_att"):
        evaluate_stats(stats, ds.targets(), ds.ignore_mask(), EvalOptions([0.1], [1], ["prob"]))


def test_column_help_is_the_one_column_list():
    assert COLUMNS == list(COLUMN_HELP)
    assert all(text and "\n" not in text for text in COLUMN_HELP.values())
    for column in ("mAP", "delta", TOP_C, "CF1@t"):
        assert "%" in COLUMN_HELP[column] or "percentage" in COLUMN_HELP[column]
    ds = TinyImages(n=10, n_classes=1000)
    df = evaluate_stats(_synthetic_stats(n=10), ds.targets(), ds.ignore_mask(),
                        EvalOptions([0.1], [1], ["logit"], select_on="val"))
    assert list(df.columns) == [c for c in COLUMNS if c in df.columns]
    assert set(evaluation.__all__) >= {"COLUMN_HELP", "COLUMNS", "evaluate_stats"}


def test_readme_lists_every_column_from_column_help(benchmark_script):
    """README's column list is rendered from COLUMN_HELP (python benchmarks/readme_columns.py), not typed."""
    from pathlib import Path

    module = benchmark_script("readme_columns")
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert module.updated(text) == text, "README's column list is stale: run python benchmarks/readme_columns.py"


def test_a_baseline_that_does_not_apply_gets_rows_that_say_why():
    rng = np.random.default_rng(0)
    n, c = 20, 4
    stats = {"logit_base": rng.normal(size=(n, c)).astype(np.float32),
             "logit_att": rng.normal(size=(n, 8, c)).astype(np.float32),
             "logit@max-pool": np.full((n, c), np.nan, np.float32)}
    targets = rng.random((n, c)) < 0.4
    targets[0] = True
    df = evaluate_stats(stats, targets, np.zeros((n, c), bool), EvalOptions([0.1], spaces=["logit"]),
                        notes={"max-pool": "needs a spatial feature map; NLC+1 tokens are pooled by the head"})
    row = df[df["method"] == "max-pool"]
    assert len(row) == 1 and row["mAP"].isna().all()
    assert row["note"].iloc[0].startswith("not applicable: needs a spatial feature map")
    assert set(df["method"]) == {"model", "csra", "max-pool"}
