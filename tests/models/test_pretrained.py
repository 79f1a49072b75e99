"""``--pretrained``: published weights read from the libraries' own caches (torch hub, HF hub)
with the network off; a missing file is one error line that says where it goes."""

from __future__ import annotations

import pytest
import torch

from advrank.errors import AdvrankError
from advrank.models.pretrained import hub_checkpoint_path
from advrank.models.sources import SourceOptions, load_source_model

QUIET = {"log": lambda msg: None}


def _same(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = module.state_dict()
    shared = [k for k in own if k in state]
    assert len(shared) == len(own)
    for k in shared:
        assert torch.equal(own[k], state[k]), k


def test_torchvision_pretrained_reads_the_torch_hub_cache(offline_caches):
    state = offline_caches.put_torchvision("resnet18")
    model, info = load_source_model("torchvision:resnet18", SourceOptions(pretrained="DEFAULT"),
                                    **QUIET)
    _same(model.net, state)  # every backbone tensor; the classifier (fc) is removed
    assert not info["random_weights"] and info["pretrained"] == "DEFAULT"
    assert info["weights"] == str(offline_caches.torch_hub / "checkpoints" /
                                  "resnet18-f37072fd.pth")


def test_timm_pretrained_reads_the_torch_hub_file_of_its_url(offline_caches):
    state = offline_caches.put_timm_url("resnet18")
    model, info = load_source_model("timm:resnet18", SourceOptions(pretrained="DEFAULT"),
                                    **QUIET)
    _same(model.net, state)
    assert info["weights"].startswith(str(offline_caches.torch_hub))


def test_timm_pretrained_reads_the_hf_cache_first(offline_caches):
    offline_caches.put_timm_url("resnet10t")  # the old cache loses to the HF hub file
    state = offline_caches.put_timm_hf("resnet10t")
    model, info = load_source_model("timm:resnet10t", SourceOptions(pretrained="DEFAULT"),
                                    **QUIET)
    _same(model.net, state)
    assert info["weights"].endswith("model.safetensors")


def test_timm_hf_hub_name_reads_config_and_weights_from_the_hf_cache(offline_caches):
    state = offline_caches.put_timm_hf("resnet10t")
    model, info = load_source_model("timm:hf-hub:timm/resnet10t.c3_in1k",
                                    SourceOptions(pretrained="DEFAULT"), **QUIET)
    _same(model.net, state)
    assert info["weights"].endswith("model.safetensors") and not info["random_weights"]


def test_missing_weights_offline_say_which_file_and_where(offline_caches):
    from torchvision.models import ResNet18_Weights

    want = hub_checkpoint_path(ResNet18_Weights.DEFAULT.url)
    with pytest.raises(AdvrankError) as err:
        load_source_model("torchvision:resnet18", SourceOptions(pretrained="DEFAULT"), **QUIET)
    message = str(err.value)
    assert "\n" not in message and str(want) in message and ResNet18_Weights.DEFAULT.url in message
    assert not want.exists() and not want.with_name(want.name + ".partial").exists()
    with pytest.raises(AdvrankError, match="models--timm--resnet10t.c3_in1k") as err:
        load_source_model("timm:resnet10t", SourceOptions(pretrained="DEFAULT"), **QUIET)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("spec, options, fragment", [
    ("torchvision:resnet18", SourceOptions(pretrained="IMAGENET9K"), "IMAGENET1K_V1"),
    ("timm:resnet18", SourceOptions(pretrained="a1_in1k"), "timm:resnet18.TAG"),
    ("torchvision:resnet18", SourceOptions(pretrained="DEFAULT", weights=__file__), "not both"),
])
def test_pretrained_refusals(offline_caches, spec, options, fragment):
    with pytest.raises(AdvrankError, match=fragment):
        load_source_model(spec, options, **QUIET)


def test_pretrained_needs_a_source_that_publishes_weights(offline_caches, tmp_path):
    with pytest.raises(AdvrankError, match="not available for torchscript"):
        load_source_model(f"torchscript:{tmp_path / 'm.ts'}",
                          SourceOptions(pretrained="DEFAULT"), **QUIET)


def test_open_clip_pretrained_needs_a_published_tag_and_says_where_it_goes(offline_caches):
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model("ViT-B-32")
    with pytest.raises(AdvrankError, match="needs a tag: one of") as err:
        load_source_model("open_clip:ViT-B-32", SourceOptions(pretrained="DEFAULT"), **QUIET)
    assert all(tag in str(err.value) for tag in tags)
    with pytest.raises(AdvrankError, match="not cached") as err:
        load_source_model("open_clip:ViT-B-32", SourceOptions(pretrained=tags[0]), **QUIET)
    assert "\n" not in str(err.value)
