"""benchmarks/compat.py's token grid check: measured in the forward pass, independent of heads.py."""
import csv

import pytest
import torch
from torch import nn

from posthoc_csra import heads


@pytest.fixture(scope="module")
def compat(benchmark_script):
    return benchmark_script("compat")


def test_grid_fits_equal_or_square_merge_only(compat):
    assert compat.grid_fits((4, 4), (4, 4))
    assert compat.grid_fits((2, 3), (8, 12))  # merged 4 x 4
    assert not compat.grid_fits((4, 4), (8, 16))  # merged 2 x 4: not a k x k merge
    assert not compat.grid_fits((2, 8), (4, 4))  # the right L = 16, the wrong factorisation
    assert not compat.grid_fits((8, 2), (4, 4))
    assert not compat.grid_fits((3, 3), (4, 4))


class PatchTokens(nn.Module):
    """A token model: (B, 3, H, W) → conv stem → (B, 1 + L, D), optional per-patch pixel conv."""

    def __init__(self, embed_by_linear=False):
        super().__init__()
        self.embed_by_linear = embed_by_linear
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Linear(3 * 16 * 16, 8) if embed_by_linear else nn.Conv2d(3, 8, 16, 16)
        self.pixel_conv = nn.Conv2d(3, 3, 3, padding=1)  # runs on (B * L, 3, 16, 16): not the token grid
        self.pool = nn.AdaptiveAvgPool2d(1)  # a 1 x 1 output: no grid

    def forward_features(self, x):
        b = x.shape[0]
        patches = x.unfold(2, 16, 16).unfold(3, 16, 16)  # (B, 3, gh, gw, 16, 16)
        self.pixel_conv(patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 16, 16))
        self.pool(x)
        if self.embed_by_linear:
            tokens = self.patch_embed.proj(patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2))
        else:
            tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([tokens.new_zeros(b, 1, tokens.shape[-1]), tokens], 1)


def test_probe_measures_the_patch_embedding_and_restores_the_model(compat):
    model = PatchTokens()
    with compat.GridProbe(model) as probe:
        model.forward_features(torch.randn(2, 3, 64, 96))
        model.pool(torch.randn(2, 3, 32, 32))  # outside forward_features: not recorded
    assert probe.measured() == (compat.GRID_PATCH_EMBED, "patch_embed.proj", (4, 6))
    assert "forward_features" not in model.__dict__
    assert not any(m._forward_hooks for m in model.modules())


def test_probe_measures_nothing_without_a_spatial_module_on_the_batch(compat):
    model = PatchTokens(embed_by_linear=True)
    with compat.GridProbe(model) as probe:
        model.forward_features(torch.randn(2, 3, 64, 64))
    assert probe.measured() == (compat.GRID_NONE, "", None)


def test_probe_falls_back_to_the_last_spatial_activation(compat):
    model = nn.Sequential(nn.Conv2d(3, 4, 4, 4), nn.Conv2d(4, 4, 2, 2))
    model.forward_features = lambda x: model(x)  # a bound-like attribute, restored as it was
    saved = model.forward_features
    with compat.GridProbe(model) as probe:
        model.forward_features(torch.randn(2, 3, 64, 32))
    assert probe.measured() == (compat.GRID_LAST_4D, "1", (8, 4))
    assert model.forward_features is saved


def test_check_rejects_a_grid_that_does_not_fit_the_measured_one(compat, monkeypatch):
    import timm

    model = compat._prepare(timm.create_model("test_vit", pretrained=False, img_size=64))
    row = compat._check(model, (64, 64), allow_few_locations=False)
    assert row["supported"] and row["grid"] == "4x4"
    assert (row["grid_check"], row["measured_grid"]) == (compat.GRID_PATCH_EMBED, "4x4 (patch_embed.proj)")
    # a grid bug in heads.py with the right L = 16: the measured 4 x 4 grid catches it
    monkeypatch.setattr(heads.Tokens, "grid", lambda self, features, model, input_hw: (2, 8))
    row = compat._check(model, (64, 64), allow_few_locations=False)
    assert not row["supported"] and "does not fit the measured 4x4 grid of patch_embed.proj" in row["reason"]


def test_old_csv_rows_are_marked_as_carrying_the_old_check(compat, tmp_path):
    path = tmp_path / "compat.csv"
    old_columns = compat.COLUMNS[:compat.COLUMNS.index("grid_check")]
    rows = [dict(model="a_vit", feature_format="NLC+1", supported="True", grid="4x4"),
            dict(model="b_cnn", feature_format="NCHW", supported="True", grid="2x2"),
            dict(model="c_multi", supported="False", reason="forward_features returns list")]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old_columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    assert compat.csv_header(path) != compat.COLUMNS
    compat.compact_csv(path)
    assert compat.csv_header(path) == compat.COLUMNS
    checks = {r["model"]: r["grid_check"] for r in compat.read_rows(path)}
    assert checks == {"a_vit": compat.GRID_OLD, "b_cnn": compat.GRID_OLD_MAP, "c_multi": ""}
    compat.compact_csv(path)  # rows that have the column keep their value
    assert {r["model"]: r["grid_check"] for r in compat.read_rows(path)} == checks
