import pytest
import torch

from posthoc_csra import WeightsUnavailableError, class_names, load_model
from posthoc_csra.models import check_model_name


def test_unknown_model_suggests_close_matches():
    with pytest.raises(ValueError, match="resnet50"):
        check_model_name("resnet05")
    assert check_model_name("resnet50.a1_in1k") == "resnet50"


def test_random_weights_only_when_asked():
    model = load_model("resnet10t", pretrained=False)
    assert not model.training and model.pretrained_cfg["input_size"] == (3, 176, 176)


def test_no_weights_is_an_error_that_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("POSTHOC_CSRA_SHARED", str(tmp_path))  # no local weights either
    with pytest.raises(WeightsUnavailableError, match="--checkpoint"):
        load_model("resnet10t")


def test_local_checkpoint_state_dict_and_class_count(tmp_path):
    source = load_model("resnet10t", pretrained=False, num_classes=20)
    path = tmp_path / "voc.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = load_model("resnet10t", checkpoint=path)  # num_classes taken from the checkpoint
    assert model.num_classes == 20
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    assert "checkpoint" in model.pretrained_cfg["weights_source"]


class Payload:  # anything but tensors and containers needs code to unpickle
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_that_needs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": Payload()}, path)
    with pytest.raises(ValueError, match="arbitrary code"):
        load_model("resnet10t", checkpoint=path)


def test_mismatched_checkpoint_names_the_problem(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(load_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit"):
        load_model("resnet10t", checkpoint=path)


def test_shared_manifest_and_labels(shared):
    model = load_model("mobilenetv2_100", checkpoint=shared / "weights" / "manifest.json")
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) or list(model.pretrained_cfg["mean"]) == [0.5] * 3
    names = class_names(model)
    assert len(names) == 1000 and names[88] == "macaw"


def test_hub_loading_code_with_a_local_file(lite0_weights, monkeypatch):
    """The hub path (pretrained=True) is timm's own; a local file in the cfg overlay exercises it offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("tf_efficientnet_lite0", pretrained=True,
                       pretrained_cfg_overlay=dict(file=str(lite0_weights)))
    reference = load_model("tf_efficientnet_lite0", checkpoint=lite0_weights)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_larger_token_grid_resamples_position_embeddings(tmp_path):
    source = load_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path / "vit.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    model = load_model("vit_tiny_patch16_224", checkpoint=path, img_size=288)
    assert model.pos_embed.shape[1] == 1 + 18 * 18
