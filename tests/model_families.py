"""The model families whose methods the README lists: each built from its library's config with random weights.

Shrunk where that keeps the architecture (fewer blocks, small images), so that every registered method runs on one
sample in seconds. ``python tests/model_families.py`` prints the README's table of the methods that run on each
family (``available_methods(model)``, which tests/methods/test_model_families.py checks against what runs).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

#: Options that make each method cheap on one sample; whether a method runs does not depend on them.
QUICK_OPTIONS = {
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"nt_samples": 2},
    "gradient_shap": {"n_samples": 2},
    "kernel_shap": {"n_samples": 16},
    "mfaba": {"max_steps": 3},
    "ig2": {"steps": 3, "n_references": 1},
    "fei": {"iterations": 2, "levels": (0.5,)},
    "big": {"attack_steps": 2, "ig_steps": 2, "epsilons": (0.1,)},
    "agi": {"max_iter": 2},
    "occlusion": {"window": 8},
}


def _seeded(build):
    def seeded():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build().eval()

    return seeded


def _torchvision_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    model.heads.head = nn.Linear(32, 4)  # built without weights the head is zero: no logit would depend on the input
    return model


def _timm(name: str, **config):
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=4, **config)

    return build


def _hugging_face(kind: str):
    def build() -> nn.Module:
        import transformers as hf

        sizes = {"vocab_size": 50, "num_labels": 3}
        if kind == "distilbert":
            config = hf.DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, **sizes)
            return hf.DistilBertForSequenceClassification(config)
        common = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
        if kind == "roberta":  # RoBERTa's positions start after its padding id (1)
            config = hf.RobertaConfig(**common, max_position_embeddings=40, pad_token_id=1, **sizes)
            return hf.RobertaForSequenceClassification(config)
        return hf.BertForSequenceClassification(hf.BertConfig(**common, max_position_embeddings=40, **sizes))

    return build


def _torchvision_resnet() -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(num_classes=4)


#: family -> (library and model, how it is built, builder, input side for images or None for token ids).
FAMILIES = {
    "torchvision ResNet": ("`resnet18`", _seeded(_torchvision_resnet), 32),
    "torchvision ViT": ("`VisionTransformer`, 2 blocks", _seeded(_torchvision_vit), 32),
    "timm ViT": ("`vit_tiny_patch16_224`, 2 blocks", _seeded(_timm("vit_tiny_patch16_224", img_size=32, depth=2)), 32),
    "timm DeiT": (
        "`deit_tiny_distilled_patch16_224`, 2 blocks",
        _seeded(_timm("deit_tiny_distilled_patch16_224", img_size=32, depth=2)),
        32,
    ),
    "timm ConvNeXt": ("`convnext_atto`", _seeded(_timm("convnext_atto", ls_init_value=1.0)), 32),
    "timm EfficientNet": ("`efficientnet_b0`", _seeded(_timm("efficientnet_b0")), 32),
    "timm Swin": (
        "`swin_tiny_patch4_window7_224`, windows of 2, 1 block per stage",
        _seeded(_timm("swin_tiny_patch4_window7_224", img_size=32, window_size=2, depths=(1, 1, 1, 1))),
        32,
    ),
    "Hugging Face BERT": ("`BertForSequenceClassification`, 2 layers", _seeded(_hugging_face("bert")), None),
    "Hugging Face RoBERTa": ("`RobertaForSequenceClassification`, 2 layers", _seeded(_hugging_face("roberta")), None),
    "Hugging Face DistilBERT": (
        "`DistilBertForSequenceClassification`, 2 layers",
        _seeded(_hugging_face("distilbert")),
        None,
    ),
}


def readme_table() -> str:
    """The README's table: one row per registered method, one column per family, a check where it runs."""
    from lit_attr.methods import available_methods

    listed = {family: set(available_methods(build())) for family, (_, build, _) in FAMILIES.items()}
    header = "| method | " + " | ".join(FAMILIES) + " |"
    rule = "|---|" + "---|" * len(FAMILIES)
    rows = [
        f"| `{name}` | " + " | ".join("✓" if name in listed[family] else "–" for family in FAMILIES) + " |"
        for name in available_methods()
    ]
    return "\n".join([header, rule, *rows])


if __name__ == "__main__":
    sys.stdout.write(readme_table() + "\n")
