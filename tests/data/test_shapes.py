import re

import pytest
import torch

from lit_attr.data import CLASS_NAMES, ShapesDataModule, ShapesDataset

# --------------------------------------------------------------------------------------------- ShapesDataset


def _classify_mask(mask: torch.Tensor) -> int:
    """Recognise the shape of a binary mask from its geometry alone (index into CLASS_NAMES)."""
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = box.shape
    if box.float().mean() > 0.97:
        return CLASS_NAMES.index("square")
    if box[(h + 1) // 2 :].sum() > 1.8 * box[: h // 2].sum():
        return CLASS_NAMES.index("triangle")
    # Points halfway between the centre and the corners lie inside a disc but between the arms of a cross.
    quadrant_points = [box[round((h - 1) * f), round((w - 1) * g)] for f in (0.25, 0.75) for g in (0.25, 0.75)]
    return CLASS_NAMES.index("disc") if all(quadrant_points) else CLASS_NAMES.index("cross")


def test_class_names() -> None:
    assert CLASS_NAMES == ("square", "disc", "triangle", "cross")


@pytest.mark.parametrize("image_size", [16, 32, 40])
def test_shapes_and_dtypes(image_size: int) -> None:
    ds = ShapesDataset(10, image_size=image_size)
    assert len(ds) == 10
    assert ds.images.shape == (10, 3, image_size, image_size)
    assert ds.images.dtype == torch.float32
    assert ds.labels.shape == (10,)
    assert ds.labels.dtype == torch.long
    assert ds.masks.shape == (10, image_size, image_size)
    assert ds.masks.dtype == torch.bool
    image, label, mask = ds[3]
    assert torch.equal(image, ds.images[3])
    assert label.item() == ds.labels[3].item()
    assert torch.equal(mask, ds.masks[3])


def test_same_seed_gives_identical_tensors() -> None:
    a = ShapesDataset(64, seed=3)
    b = ShapesDataset(64, seed=3)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.masks, b.masks)


def test_different_seed_gives_different_tensors() -> None:
    a = ShapesDataset(64, seed=3)
    b = ShapesDataset(64, seed=4)
    assert not torch.equal(a.images, b.images)
    assert not torch.equal(a.labels, b.labels)
    assert not torch.equal(a.masks, b.masks)


def test_generation_leaves_global_rng_untouched() -> None:
    state = torch.get_rng_state()
    ShapesDataset(50, seed=1)
    assert torch.equal(state, torch.get_rng_state())


def test_values_in_unit_interval() -> None:
    images = ShapesDataset(200, seed=2).images
    assert images.min() >= 0.0
    assert images.max() <= 1.0
    assert torch.isfinite(images).all()


@pytest.mark.parametrize(("num_samples", "expected"), [(400, [100, 100, 100, 100]), (103, [26, 26, 26, 25])])
def test_exact_class_balance(num_samples: int, expected: list[int]) -> None:
    labels = ShapesDataset(num_samples, seed=9).labels
    assert torch.bincount(labels, minlength=4).tolist() == expected


def test_labels_are_shuffled() -> None:
    labels = ShapesDataset(400, seed=0).labels
    assert not torch.equal(labels, torch.arange(400) % 4)


@pytest.mark.parametrize("image_size", [16, 32, 64])
def test_masks_non_empty_and_strictly_inside(image_size: int) -> None:
    masks = ShapesDataset(300, image_size=image_size, seed=5).masks
    assert masks.flatten(1).any(1).all()
    # The class object lies fully inside the image, so it never touches the border.
    border = masks[:, 0, :].any() | masks[:, -1, :].any() | masks[:, :, 0].any() | masks[:, :, -1].any()
    assert not border


def test_class_object_is_fully_visible_and_stands_out() -> None:
    ds = ShapesDataset(200, seed=6)
    for image, mask in zip(ds.images, ds.masks, strict=True):
        object_pixels = image[:, mask]  # (3, P)
        # Drawn last with a flat colour: every masked pixel has exactly the same colour.
        assert torch.equal(object_pixels, object_pixels[:, :1].expand_as(object_pixels))
        colour = object_pixels[:, 0]
        surroundings = image[:, ~mask].mean(dim=1)
        assert (colour - surroundings).abs().max() > 0.3


@pytest.mark.parametrize("image_size", [32, 64])
def test_mask_geometry_matches_label(image_size: int) -> None:
    ds = ShapesDataset(400, image_size=image_size, seed=7)
    recognised = torch.tensor([_classify_mask(mask) for mask in ds.masks])
    assert torch.equal(recognised, ds.labels)


def test_distractors_present_only_when_requested() -> None:
    # Objects always have one channel at full brightness, while the background stays dim, so bright pixels
    # outside the class mask can only belong to distractors.
    with_distractors = ShapesDataset(200, seed=8, num_distractors=2)
    bright_outside = (with_distractors.images.amax(dim=1) > 0.6) & ~with_distractors.masks
    assert bright_outside.flatten(1).any(1).float().mean() > 0.9

    without = ShapesDataset(200, seed=8, num_distractors=0)
    assert not ((without.images.amax(dim=1) > 0.6) & ~without.masks).any()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_samples": 0}, ValueError, "`num_samples` must be an int >= 1, got 0"),
        ({"num_samples": 2.5}, TypeError, "`num_samples` must be an int >= 1, got float 2.5"),
        ({"num_samples": True}, TypeError, "`num_samples` must be an int >= 1, got bool True"),
        ({"num_samples": 4, "image_size": 8}, ValueError, "`image_size` must be an int >= 16, got 8"),
        ({"num_samples": 4, "seed": -1}, ValueError, "`seed` must be an int >= 0, got -1"),
        ({"num_samples": 4, "num_distractors": -2}, ValueError, "`num_distractors` must be an int >= 0, got -2"),
    ],
)
def test_invalid_arguments(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        ShapesDataset(**kwargs)


# ------------------------------------------------------------------------------------------ ShapesDataModule


def _small_dm(**kwargs: int) -> ShapesDataModule:
    params = {"num_train": 96, "num_val": 40, "num_test": 24, "batch_size": 16} | kwargs
    dm = ShapesDataModule(**params)
    dm.setup()
    return dm


def test_datamodule_defaults_and_hparams() -> None:
    dm = ShapesDataModule()
    assert dm.num_classes == 4
    assert dm.hparams.num_train == 4000
    assert dm.hparams.num_val == 512
    assert dm.hparams.num_test == 512
    assert dm.hparams.batch_size == 64
    assert dm.hparams.image_size == 32
    assert dm.hparams.num_distractors == 2


@pytest.mark.parametrize("loader_name", ["train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader"])
def test_loaders_yield_image_label_mask(loader_name: str) -> None:
    dm = _small_dm(image_size=24)
    batch = next(iter(getattr(dm, loader_name)()))
    assert len(batch) == 3
    x, y, mask = batch
    assert x.shape == (16, 3, 24, 24)
    assert x.dtype == torch.float32
    assert y.shape == (16,)
    assert y.dtype == torch.long
    assert mask.shape == (16, 24, 24)
    assert mask.dtype == torch.bool


def test_split_sizes_and_splits_differ() -> None:
    dm = _small_dm()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (96, 40, 24)
    assert not torch.equal(dm.train_set.images[:24], dm.val_set.images[:24])
    assert not torch.equal(dm.val_set.images[:24], dm.test_set.images)


def test_setup_is_deterministic_for_a_seed() -> None:
    a, b, c = _small_dm(seed=1), _small_dm(seed=1), _small_dm(seed=2)
    assert torch.equal(a.train_set.images, b.train_set.images)
    assert torch.equal(a.test_set.masks, b.test_set.masks)
    assert not torch.equal(a.train_set.images, c.train_set.images)


def test_train_shuffling_is_reproducible() -> None:
    def epoch_labels(dm: ShapesDataModule) -> torch.Tensor:
        return torch.cat([y for _, y, _ in dm.train_dataloader()])

    dm = _small_dm(seed=3)
    first = epoch_labels(dm)
    assert torch.equal(first, epoch_labels(dm))
    assert torch.equal(first, epoch_labels(_small_dm(seed=3)))
    # It is a permutation of the split, but not the split's own order.
    assert torch.equal(first.sort().values, dm.train_set.labels.sort().values)
    images = torch.cat([x for x, _, _ in dm.train_dataloader()])
    assert not torch.equal(images, dm.train_set.images)


def test_consecutive_epochs_use_different_orders() -> None:
    loader = _small_dm(seed=3).train_dataloader()
    epoch1 = torch.cat([x for x, _, _ in loader])
    epoch2 = torch.cat([x for x, _, _ in loader])
    assert not torch.equal(epoch1, epoch2)


@pytest.mark.parametrize(
    ("loader_name", "split"),
    [("val_dataloader", "val_set"), ("test_dataloader", "test_set"), ("predict_dataloader", "test_set")],
)
def test_evaluation_loaders_keep_dataset_order(loader_name: str, split: str) -> None:
    dm = _small_dm()
    images = torch.cat([x for x, _, _ in getattr(dm, loader_name)()])
    assert torch.equal(images, getattr(dm, split).images)


def test_loaders_leave_global_rng_untouched() -> None:
    dm = _small_dm()
    state = torch.get_rng_state()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        for _ in loader:
            pass
    assert torch.equal(state, torch.get_rng_state())


def test_setup_per_stage_and_missing_split() -> None:
    dm = ShapesDataModule(num_train=8, num_val=8, num_test=8, batch_size=4)
    dm.setup("test")
    assert dm.train_set is None
    assert len(dm.test_set) == 8
    with pytest.raises(RuntimeError, match="train split is not available"):
        dm.train_dataloader()
    test_set = dm.test_set
    dm.setup()
    assert dm.test_set is test_set  # setup is idempotent
    assert len(dm.train_set) == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "`batch_size` must be an int >= 1, got 0"),
        ({"num_val": 0}, "`num_val` must be an int >= 1, got 0"),
        ({"image_size": 12}, "`image_size` must be an int >= 16, got 12"),
        ({"num_workers": -1}, "`num_workers` must be an int >= 0, got -1"),
    ],
)
def test_datamodule_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ShapesDataModule(**kwargs)
