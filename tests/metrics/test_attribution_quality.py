"""AttributionQuality: one Metric that attributes and scores, used from a LightningModule."""

import lightning as L
import pytest
import torch
from torch import nn

from lit_attr.attribution_quality import AttributionQuality
from lit_attr.data import ShapesDataModule
from lit_attr.methods import available_methods, get_method
from lit_attr.metrics import InsertionDeletion, Localization
from lit_attr.models import DemoClassifier

# The methods that apply to any model (attention maps need a transformer).
GENERIC_METHODS = available_methods(nn.Identity())


def test_values_logged_inside_fit_equal_method_and_metrics_by_hand():
    L.seed_everything(0, verbose=False)
    data = ShapesDataModule(num_train=128, num_val=48, batch_size=32)
    options = {
        "method": "saliency",
        "metrics": ["insertion_deletion", "localization"],
        "metric_kwargs": {"insertion_deletion": {"n_steps": 8}},
    }
    model = DemoClassifier(attribution_quality=options)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    logged = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("attr/saliency/")}

    model.eval()
    method = get_method("saliency", model)
    faithfulness, localization = InsertionDeletion(model, n_steps=8), Localization()
    for x, _, masks in data.val_dataloader():
        attributions = method.attribute(x)
        faithfulness.update(x, attributions)
        localization.update(attributions, masks)
    expected = {
        **{f"attr/saliency/insertion_deletion/{k}": v for k, v in faithfulness.compute().items() if v.numel() == 1},
        **{f"attr/saliency/localization/{k}": v for k, v in localization.compute().items() if v.numel() == 1},
    }
    assert sorted(logged) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(logged[key], value, msg=key)


def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 3))


def test_model_state_untouched_and_not_in_state_dict():
    model = tiny_cnn().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(5, 3, 8, 8)
    rng = torch.get_rng_state()
    quality = AttributionQuality(model, "integrated_gradients", method_kwargs={"n_steps": 4},
                                 metrics=("insertion_deletion", "activation_deviation"),
                                 metric_kwargs={"insertion_deletion": {"n_steps": 4}, "activation_deviation":
                                                {"n_steps": 4}})
    with torch.no_grad():
        quality.update(x)
    result = quality.compute()
    assert set(result) == {
        *(f"attr/integrated_gradients/insertion_deletion/{k}" for k in ("insertion", "deletion", "difference")),
        *(f"attr/integrated_gradients/activation_deviation/{k}"
          for k in ("activation_deviation", "insertion_overlap", "deletion_overlap")),
    }  # fmt: skip
    assert all(torch.isfinite(v) for v in result.values())
    assert model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(key.startswith(("0.", "1.", "4.")) for key in quality.state_dict())
    quality.reset()
    assert int(quality.scores["insertion_deletion"].count) == 0


def test_max_samples_per_update_is_a_seeded_subset():
    model = tiny_cnn().eval()
    x = torch.rand(10, 3, 8, 8)
    kwargs = {"metric_kwargs": {"insertion_deletion": {"n_steps": 4}}, "max_samples_per_update": 3}
    a, b = AttributionQuality(model, "saliency", **kwargs), AttributionQuality(model, "saliency", **kwargs)
    a.update(x)
    b.update(x)
    assert int(a.scores["insertion_deletion"].count) == 3
    torch.testing.assert_close(a.compute(), b.compute())
    rows = torch.randperm(10, generator=torch.Generator().manual_seed(0))[:3].sort().values
    reference = InsertionDeletion(model, n_steps=4)
    reference.update(x[rows], get_method("saliency", model).attribute(x[rows]))
    insertion = a.compute()["attr/saliency/insertion_deletion/insertion"]
    torch.testing.assert_close(insertion, reference.compute()["insertion"])


def test_ig2_uses_the_batch_as_reference_pool():
    model = tiny_cnn().eval()
    quality = AttributionQuality(model, "ig2", method_kwargs={"steps": 3, "n_references": 2},
                                 metric_kwargs={"insertion_deletion": {"n_steps": 4}})
    quality.update(torch.rand(6, 3, 8, 8), target=torch.arange(6) % 3)
    assert torch.isfinite(quality.compute()["attr/ig2/insertion_deletion/insertion"])


def test_one_metric_name_is_a_string_as_in_the_monitor():
    model = tiny_cnn().eval()
    x = torch.rand(4, 3, 8, 8)
    options = {"metric_kwargs": {"insertion_deletion": {"n_steps": 4}}}
    single = AttributionQuality(model, "saliency", metrics="insertion_deletion", **options)
    listed = AttributionQuality(model, "saliency", metrics=["insertion_deletion"], **options)
    single.update(x)
    listed.update(x)
    torch.testing.assert_close(single.compute(), listed.compute())
    with pytest.raises(ValueError, match="`metrics` must name at least one metric"):
        AttributionQuality(model, "saliency", metrics=[])


def test_ig2_on_a_batch_of_one_class_says_where_its_references_come_from():
    model = tiny_cnn().eval()
    quality = AttributionQuality(model, "ig2", method_kwargs={"steps": 3, "n_references": 2},
                                 metric_kwargs={"insertion_deletion": {"n_steps": 4}})  # fmt: skip
    with pytest.raises(ValueError, match=r"the batch itself in AttributionQuality\) has no sample of a class other "
                                         r"than 1 .*pass reference_pool=\(inputs, labels\)"):  # fmt: skip
        quality.update(torch.rand(4, 3, 8, 8), target=torch.ones(4, dtype=torch.long))


def test_errors():
    model = tiny_cnn()
    with pytest.raises(ValueError, match=r"Unknown attribution method 'nope'"):
        AttributionQuality(model, "nope")
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \[.auc.\]; available: activation_deviation, "):
        AttributionQuality(model, "saliency", metrics=("auc",))
    quality = AttributionQuality(model, "saliency", metrics=("localization",))
    with pytest.raises(ValueError, match="`masks` are required: 'localization'"):
        quality.update(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"`max_samples_per_update` must be a positive int"):
        AttributionQuality(model, "saliency", max_samples_per_update=0)


FAST = {
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"nt_samples": 2},
    "gradient_shap": {"n_samples": 2},
    "mfaba": {"max_steps": 5},
    "big": {"attack_steps": 3, "ig_steps": 4},
    "agi": {"max_iter": 3},
    "ig2": {"steps": 3, "n_references": 2},
    "fei": {"iterations": 2, "levels": (0.5,)},
}


@pytest.mark.parametrize("name", GENERIC_METHODS)
def test_every_registered_method_scores_under_no_grad(name):
    model = tiny_cnn().eval()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    masks = torch.zeros(6, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    quality = AttributionQuality(model, name, metrics=("insertion_deletion", "localization"),
                                 method_kwargs=FAST.get(name), metric_kwargs={"insertion_deletion": {"n_steps": 4}})
    with torch.no_grad():
        quality.update(x, target=torch.arange(6) % 3, masks=masks)
    result = quality.compute()
    assert len(result) == 7 and all(torch.isfinite(v) for v in result.values()), result
    # the same numbers as running the method and the metrics by hand
    method = get_method(name, model, **FAST.get(name, {}))
    extra = {}
    if name == "ig2":  # the metric draws ig2's references from the batch itself
        extra = {"references": method.sample_references(x, torch.arange(6) % 3, pool=(x, torch.arange(6) % 3))}
    reference = InsertionDeletion(model, n_steps=4)
    reference.update(x, method.attribute(x, torch.arange(6) % 3, **extra), torch.arange(6) % 3)
    torch.testing.assert_close(result[f"attr/{name}/insertion_deletion/insertion"], reference.compute()["insertion"])


def test_the_old_import_paths_still_give_the_class_with_a_deprecation_warning():
    import lit_attr.metrics as metrics
    import lit_attr.metrics.attribution_quality as old_module

    for module in (metrics, old_module):
        with pytest.warns(DeprecationWarning, match="moved to lit_attr.attribution_quality.AttributionQuality"):
            assert module.AttributionQuality is AttributionQuality
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        metrics.Nope  # noqa: B018
