"""Data modules: digits (offline), MNIST / Fashion-MNIST from real IDX files, image folders."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import create_datamodule, list_datasets
from training.data.digits import DigitsDataModule
from training.data.folder import FolderDataModule
from training.data.torchvision_sets import FashionMNISTDataModule, MNISTDataModule
from training.errors import WaldoError
from training.spec import DataSpec


def all_items(ds) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return torch.stack(images), torch.as_tensor(labels)


# --- digits ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=16)
    dm.setup("fit")
    return dm


def test_datasets_registry():
    assert {"digits", "mnist", "fashion-mnist", "cifar10", "folder"} <= set(list_datasets())
    with pytest.raises(WaldoError, match="'nope'.*digits"):
        create_datamodule(DataSpec(name="nope"))


def test_digits_images_are_1x28x28_uint8(digits):
    for ds in (digits.train_set, digits.val_set, digits.test_set):
        image, label = ds[0]
        assert image.shape == (1, 28, 28) and image.dtype == torch.uint8
        assert label.dtype == torch.int64
    images, _ = all_items(digits.train_set)
    assert images.max() > 200 and images.min() == 0  # full 0..255 range, black background
    assert (digits.in_channels, digits.image_size, digits.num_classes) == (1, 28, 10)


def test_digits_split_sizes_and_labels(digits):
    sizes = [len(digits.train_set), len(digits.val_set), len(digits.test_set)]
    assert sum(sizes) == 1797  # scikit-learn's digits, each used once
    assert sizes[2] == pytest.approx(0.2 * 1797, abs=1)
    assert sizes[1] == pytest.approx(0.15 * (1797 - sizes[2]), abs=1)
    assert digits.labels == [str(d) for d in range(10)]
    for ds in (digits.train_set, digits.val_set, digits.test_set):
        _, labels = all_items(ds)
        assert set(labels.tolist()) == set(range(10))  # stratified: every class in every split


def test_digits_split_is_deterministic(digits):
    other = DigitsDataModule(batch_size=16, val_fraction=digits.val_fraction)
    other.setup("fit")
    for a, b in [(digits.train_set, other.train_set), (digits.val_set, other.val_set),
                 (digits.test_set, other.test_set)]:
        for ta, tb in zip(a.tensors, b.tensors, strict=True):
            assert torch.equal(ta, tb)


def test_digits_splits_do_not_overlap(digits):
    def keys(ds):
        images, labels = all_items(ds)
        return {(bytes(img.numpy()), int(lab)) for img, lab in zip(images, labels, strict=True)}

    train, val, test = keys(digits.train_set), keys(digits.val_set), keys(digits.test_set)
    # Some digits are pixel-identical duplicates in the source; allow a handful.
    assert len(train & test) < 10 and len(train & val) < 10


def test_digits_mean_std_are_the_training_sets(digits):
    images, _ = all_items(digits.train_set)
    x = images.float() / 255
    assert digits.mean == pytest.approx((x.mean().item(),), abs=1e-5)
    assert digits.std == pytest.approx((x.std().item(),), abs=1e-5)


def test_state_dict_round_trip(digits):
    state = digits.state_dict()
    assert state["labels"] == digits.labels
    assert tuple(state["mean"]) == digits.mean and tuple(state["std"]) == digits.std
    fresh = DigitsDataModule(image_size=40)  # never set up; state must be enough
    fresh.load_state_dict(state)
    assert (fresh.labels, fresh.mean, fresh.std) == (digits.labels, digits.mean, digits.std)
    assert fresh.image_size == digits.image_size
    batch = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(fresh.batch_transform()(batch), digits.batch_transform()(batch))


def test_batch_transform_normalizes(digits):
    images, labels = next(iter(digits.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (16, 1, 28, 28)
    x, y = digits.on_after_batch_transfer((images, labels), 0)
    assert x.dtype == torch.float32 and x.shape == (16, 1, 28, 28)
    expected = (images.float() / 255 - digits.mean[0]) / digits.std[0]
    torch.testing.assert_close(x, expected)
    assert torch.equal(y, labels)


def test_batch_transform_resizes_to_image_size():
    dm = DigitsDataModule(batch_size=8, image_size=32)
    dm.setup("fit")
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (8, 1, 28, 28)  # stored at native size...
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.float32  # ...resized per batch
    # normalized: a black pixel maps to -mean/std
    assert x.min().item() == pytest.approx(-dm.mean[0] / dm.std[0], abs=1e-4)


def test_val_loader_is_ordered_train_loader_shuffles(digits):
    first = [next(iter(digits.val_dataloader()))[1] for _ in range(2)]
    assert torch.equal(first[0], first[1])
    torch.manual_seed(1)
    a = next(iter(digits.train_dataloader()))[1]
    torch.manual_seed(2)
    b = next(iter(digits.train_dataloader()))[1]
    assert not torch.equal(a, b)


# --- MNIST / Fashion-MNIST from IDX files --------------------------------------------------
def write_idx(raw: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write `images` (N, 28, 28) uint8 and `labels` (N,) uint8 in the IDX format."""
    raw.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 0x00000801, n) + labels.astype(np.uint8).tobytes())


def fake_idx_set(root: Path, folder: str, n_train=40, n_test=12, seed=0):
    rng = np.random.default_rng(seed)
    data = {
        "train": (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
                  rng.integers(0, 10, n_train, dtype=np.uint8)),
        "t10k": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
                 rng.integers(0, 10, n_test, dtype=np.uint8)),
    }
    for prefix, (images, labels) in data.items():
        write_idx(root / folder / "raw", prefix, images, labels)
    return data


@pytest.mark.parametrize("cls,folder", [(MNISTDataModule, "MNIST"),
                                        (FashionMNISTDataModule, "FashionMNIST")])
def test_idx_files_load_as_written(tmp_path, cls, folder):
    written = fake_idx_set(tmp_path, folder)
    dm = cls(data_dir=tmp_path, download=False, batch_size=4, val_fraction=0.25)
    dm.setup("fit")

    test_images, test_labels = all_items(dm.test_set)
    assert test_images.shape == (12, 1, 28, 28) and test_images.dtype == torch.uint8
    assert torch.equal(test_images[:, 0], torch.from_numpy(written["t10k"][0]))
    assert torch.equal(test_labels, torch.from_numpy(written["t10k"][1]).long())

    # train + val partition the written training set, with the held-out share requested.
    assert len(dm.val_set) == 10 and len(dm.train_set) == 30
    indices = sorted([*dm.train_set.indices, *dm.val_set.indices])
    assert indices == list(range(40))
    train_images, train_labels = all_items(dm.train_set)
    src_images, src_labels = written["train"]
    assert torch.equal(train_images[:, 0], torch.from_numpy(src_images[dm.train_set.indices]))
    assert torch.equal(train_labels, torch.from_numpy(src_labels[dm.train_set.indices]).long())

    assert dm.num_classes == 10 and len(dm.mean) == len(dm.std) == 1 == dm.in_channels
    x, _ = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32


def test_idx_split_is_deterministic(tmp_path):
    fake_idx_set(tmp_path, "MNIST")
    a = MNISTDataModule(data_dir=tmp_path, download=False)
    b = MNISTDataModule(data_dir=tmp_path, download=False)
    a.setup("fit"), b.setup("fit")
    assert list(a.val_set.indices) == list(b.val_set.indices)


@pytest.mark.parametrize("cls,folder", [(MNISTDataModule, "MNIST"),
                                        (FashionMNISTDataModule, "FashionMNIST")])
def test_missing_idx_files_say_where_to_put_them(tmp_path, cls, folder):
    dm = cls(data_dir=tmp_path, download=False)
    with pytest.raises(WaldoError) as exc:
        dm.setup("fit")
    message = str(exc.value)
    assert str(tmp_path) in message and f"{folder}/raw" in message
    assert "\n" not in message


def test_missing_data_dir_is_named(tmp_path):
    dm = MNISTDataModule(data_dir=tmp_path / "nope", download=False)
    with pytest.raises(WaldoError, match="nope"):
        dm.setup("fit")


# --- image folders -------------------------------------------------------------------------
COLORS = {"cat": (220, 30, 30), "dog": (30, 30, 220)}


def write_images(folder: Path, n: int, start: int = 0) -> None:
    """`n` solid-colour PNGs per class, each of a different size (and some greyscale-free RGBA)."""
    for label, color in COLORS.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            size = (10 + 3 * i, 14 + 2 * i)
            mode = "RGBA" if i % 4 == 3 else "RGB"
            fill = (*color, 255) if mode == "RGBA" else color
            Image.new(mode, size, fill).save(folder / label / f"{i:02d}.png")


def check_colours_match_labels(ds, labels: list[str], size: int) -> None:
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, size, size) and image.dtype == torch.uint8
        colour = tuple(image.float().mean(dim=(1, 2)).round().int().tolist())
        assert colour == pytest.approx(COLORS[labels[target]], abs=2)


def test_folder_of_classes_is_split(tmp_path):
    write_images(tmp_path / "pets", 12)
    dm = FolderDataModule(data_dir=tmp_path / "pets", image_size=16, batch_size=4)
    dm.setup("fit")
    assert dm.labels == ["cat", "dog"]
    assert dm.in_channels == 3 and dm.num_classes == 2
    sizes = [len(dm.train_set), len(dm.val_set), len(dm.test_set)]
    assert sum(sizes) == 24 and sizes[2] == 5 and sizes[1] == 3
    for ds in (dm.train_set, dm.val_set, dm.test_set):
        check_colours_match_labels(ds, dm.labels, 16)
    assert len(dm.mean) == len(dm.std) == 3
    assert dm.mean[0] > dm.mean[1] and dm.mean[2] > dm.mean[1]  # red and blue, little green
    images, labels = next(iter(dm.train_dataloader()))
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32


def test_folder_with_train_val_test_subfolders(tmp_path):
    write_images(tmp_path / "train", 6)
    write_images(tmp_path / "val", 3, start=6)
    write_images(tmp_path / "test", 2, start=9)
    dm = FolderDataModule(data_dir=tmp_path, image_size=20)
    dm.setup("fit")
    assert dm.labels == ["cat", "dog"]
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [12, 6, 4]
    check_colours_match_labels(dm.test_set, dm.labels, 20)
    check_colours_match_labels(dm.val_set, dm.labels, 20)


def test_folder_default_image_size_is_64(tmp_path):
    write_images(tmp_path, 4)
    dm = FolderDataModule(data_dir=tmp_path)
    dm.setup("fit")
    assert dm.image_size == 64 and dm.train_set[0][0].shape == (3, 64, 64)


def test_folder_errors(tmp_path):
    with pytest.raises(WaldoError, match="--data-dir"):
        FolderDataModule().setup("fit")
    with pytest.raises(WaldoError, match="does not exist"):
        FolderDataModule(data_dir=tmp_path / "missing").setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WaldoError, match="no images"):
        FolderDataModule(data_dir=tmp_path / "empty").setup("fit")
