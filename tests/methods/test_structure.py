"""The structural predicates behind available_methods(model): no forward pass, hand-built cases."""

import torch
from text_helpers import plain_transformer
from torch import nn
from vit_helpers import timm_vit, torchvision_vit

from lit_attr.methods import available_methods
from lit_attr.methods.attention_capture import vit_attention_runs
from lit_attr.methods.structure import has_linear, reused_modules, takes_raw_inputs, takes_token_ids


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.act = nn.Linear(4, 4), nn.ReLU()

    def forward(self, x):
        return self.act(self.lin(self.act(x)))


class _Once(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.act, self.other = nn.Linear(4, 4), nn.ReLU(), nn.ReLU()

    def forward(self, x):
        return self.other(self.lin(self.act(x)))


class _NeverRun(nn.Module):
    def forward(self, x):
        raise AssertionError("the predicates must not run the model")


def test_reused_modules_from_forward_source_and_shared_registration():
    assert reused_modules(_Twice(), nn.ReLU) == ["act"]
    assert reused_modules(_Once(), nn.ReLU) == []
    shared = nn.ReLU()
    net = nn.Sequential(nn.Linear(4, 4), shared, nn.Linear(4, 4), shared)
    assert reused_modules(net, nn.ReLU) == ["1"]  # one instance under the names 1 and 3
    assert reused_modules(nn.Sequential(_Twice()), nn.Tanh) == []  # only the asked types count


def test_deeplift_is_listed_only_without_reused_nonlinearities():
    assert "deeplift" not in available_methods(_Twice())
    assert "deeplift" in available_methods(_Once())


def test_token_models_get_no_raw_input_methods_and_no_vision_attention():
    text = plain_transformer()
    assert takes_token_ids(text) and not takes_raw_inputs(text)
    raw_only = {"agi", "big", "smoothgrad", "gradient_shap", "occlusion", "deeplift"}
    listed = set(available_methods(text))
    assert not listed & raw_only and not listed & {"attention_rollout", "generic_attention"}
    assert {"saliency", "integrated_gradients", "mfaba", "ig2", "feature_ablation"} <= listed
    image = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))
    assert takes_raw_inputs(image) and raw_only <= set(available_methods(image))


def test_fei_needs_an_activation_module_and_ig2_a_linear_layer():
    functional = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    assert "fei" not in available_methods(functional) and "fei" in available_methods(nn.Sequential(nn.GELU()))
    convolutional = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert not has_linear(convolutional) and "ig2" not in available_methods(convolutional)


def test_vit_attention_needs_a_vit_layout_and_global_token_attention():
    assert vit_attention_runs(torchvision_vit()) and vit_attention_runs(timm_vit())
    wrapped = nn.Sequential(torchvision_vit())  # a LightningModule-style wrapper: found inside
    assert vit_attention_runs(wrapped)
    outside = nn.Sequential(torchvision_vit(), nn.MultiheadAttention(4, 1))  # attention the ViT does not hold
    assert not vit_attention_runs(outside)
    plain = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, batch_first=True), 1, enable_nested_tensor=False)
    assert not vit_attention_runs(plain)  # attention but no patch layout


def test_windowed_and_class_attention_vits_are_not_listed_for_attention_maps():
    import timm

    with torch.random.fork_rng(devices=[]):
        swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=2,
                                 depths=(1, 1, 1, 1))  # fmt: skip
        cait = timm.create_model("cait_xxs24_224", pretrained=False, img_size=32, depth=1, depth_token_only=1)
    for model in (swin, cait):
        listed = set(available_methods(model))
        assert not listed & {"attention_rollout", "generic_attention"} and "saliency" in listed


def test_predicates_do_not_run_the_model():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), _NeverRun(), nn.Linear(2, 2))
    assert "saliency" in available_methods(model)
