"""available_methods(model) lists exactly the methods that run on each model family users train, and the README says
which: torchvision ResNet and ViT; timm ViT, DeiT, ConvNeXt, EfficientNet, Swin; Hugging Face BERT, RoBERTa,
DistilBERT, each built from its config (tests/model_families.py)."""

import re
import warnings
from pathlib import Path

import pytest
import torch
from model_families import FAMILIES, QUICK_OPTIONS, readme_table

from lit_attr.batch import Batch
from lit_attr.methods import available_methods, get_method

README = Path(__file__).resolve().parents[2] / "README.md"
SPECIALS = [2, 3]


def _inputs(side):
    """One sample to explain and a labelled pool for methods that draw references (IG2), as orchestrators pass it."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2, 0])
    if side is None:
        ids = torch.tensor([[2, 7, 9, 11, 13, 3]])
        pool = torch.randint(5, 50, (4, 6), generator=generator)
        pool[:, 0], pool[:, -1] = 2, 3
        keywords = {"attention_mask": torch.ones_like(ids), "special_token_ids": SPECIALS}
        return ids, keywords, Batch(pool, labels, attention_mask=torch.ones_like(pool))
    x = torch.rand(1, 3, side, side, generator=generator)
    return x, {}, Batch(torch.rand(4, 3, side, side, generator=generator), labels)


def _runs(name, model, side):
    """Whether the method, built with its defaults (and cheap budgets), explains one sample: a finite map."""
    x, keywords, pool = _inputs(side)
    options = dict(QUICK_OPTIONS.get(name, {}))
    if side is not None:
        options["input_bounds"] = (0.0, 1.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Captum's notes on unsupported layers and the like
            method = get_method(name, model, **options)
            method.prepare(pool)
            result = method.attribute(x, target=0, **keywords)
    except Exception:  # noqa: BLE001 - any failure means the method does not run on this family
        return False
    maps = result[0] if isinstance(result, tuple) else result
    return maps.shape[0] == 1 and bool(torch.isfinite(maps).all())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_available_methods_are_exactly_those_that_run(family):
    _, build, side = FAMILIES[family]
    model = build()
    ran = {name for name in available_methods() if _runs(name, model, side)}
    assert set(available_methods(model)) == ran


def test_the_readme_lists_the_methods_of_each_family():
    text = README.read_text()
    table = readme_table()
    assert table in text, f"README.md's model-family table is stale; regenerate it with:\n{table}"
    for family, (how, _, _) in FAMILIES.items():
        assert re.search(rf"\| {re.escape(family)} \| {re.escape(how)} \|", text), family
