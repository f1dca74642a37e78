"""`waldo data pack` and the packed data sets: the same images, labels, split and statistics as
the folder they came from, read from a local folder or from an S3 server (moto_server on
127.0.0.1), the splits' overlap by content stored and guarded, and one line with exit 2 for
every way a pack or a bucket can be wrong."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from support import S3_BUCKET, user_error_line, waldo_main
from support.images import box_folder, photo_folder

from training.data.folder import FolderDataModule
from training.data.localization import LocalizationFolderDataModule
from training.data.packed import LocalizationPackedDataModule, PackedDataModule, pack
from training.errors import WaldoError
from training.running.steps import check_split_overlap
from training.spec import TrainSpec


def assert_same_data(a, b) -> None:
    """Two set-up data modules hold the same labels, statistics, splits and items."""
    assert a.labels == b.labels
    assert a.mean == b.mean and a.std == b.std
    assert [str(p) for p in a.skipped_images] == [str(p) for p in b.skipped_images]
    for x, y in ((a.train_set, b.train_set), (a.val_set, b.val_set), (a.test_set, b.test_set)):
        assert len(x) == len(y)
        for i in range(len(x)):
            (ix, tx), (iy, ty) = x[i], y[i]
            torch.testing.assert_close(ix, iy, rtol=0, atol=0)
            torch.testing.assert_close(torch.as_tensor(tx), torch.as_tensor(ty), rtol=0, atol=0)


def test_packed_classification_is_the_folder(tmp_path) -> None:
    src = photo_folder(tmp_path / "photos")
    folder = FolderDataModule(data_dir=src, image_size=32, val_fraction=0.2)
    manifest = pack(FolderDataModule(data_dir=src, image_size=32, val_fraction=0.2), str(tmp_path / "p"),
                    shard_bytes=20_000)  # small shards: several per split
    assert len(manifest.splits["train"].shards) > 1
    assert [Path(p).name for p in manifest.skipped_images] == ["broken.jpg"]
    packed = PackedDataModule(data_dir=str(tmp_path / "p"), image_size=32)
    folder.setup("fit")
    folder.setup("test")
    packed.setup("fit")
    packed.setup("test")
    assert_same_data(folder, packed)
    assert len(packed.train_set) + len(packed.val_set) + len(packed.test_set) == 60


def test_packed_localization_is_the_folder(tmp_path) -> None:
    src = box_folder(tmp_path / "boxes")
    folder = LocalizationFolderDataModule(data_dir=src, image_size=32)
    pack(LocalizationFolderDataModule(data_dir=src, image_size=32), str(tmp_path / "p"))
    packed = LocalizationPackedDataModule(data_dir=str(tmp_path / "p"), image_size=32)
    for module in (folder, packed):
        module.setup("fit")
        module.setup("test")
    assert_same_data(folder, packed)


@pytest.mark.trains
def test_pack_to_a_bucket_and_train_from_it(s3, tmp_path, waldo) -> None:
    src = photo_folder(tmp_path / "photos")
    dest = f"s3://{S3_BUCKET}/packs/photos"
    packed = waldo.run("data", "pack", str(src), dest, "--val-fraction", "0.2", cwd=tmp_path)
    assert packed.returncode == 0, packed.stderr
    assert "train with --data packed" in packed.stdout
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=S3_BUCKET)["Contents"]}
    assert {"packs/photos/manifest.json", "packs/photos/train-00000.parquet"} <= keys
    trained = waldo.run("train", "--model", "cnn", "--data", "packed", "--data-dir", dest, "--epochs", "2",
                        "--image-size", "32", "--no-progress-bar", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "test_acc" in trained.stdout


def test_bad_packs_and_buckets_are_one_line_with_exit_2(s3, tmp_path, in_tmp, waldo, capsys) -> None:
    src = photo_folder(tmp_path / "photos", per_class=6)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    changed = f"s3://{S3_BUCKET}/changed"
    for dest in (whole, cut, changed):
        pack(FolderDataModule(data_dir=src), str(dest))
    s3.put_object(Bucket=S3_BUCKET, Key="changed/val-00000.parquet", Body=b"cut short")
    (cut / "test-00000.parquet").unlink()

    train = ["train", "--model", "cnn", "--epochs", "1", "--no-progress-bar", "--data-dir"]
    cases = {  # case: (argv, what the one line must say)
        "no bucket": ([*train, "s3://no-such-bucket/p", "--data", "packed"], "s3://no-such-bucket/p"),
        "empty prefix": ([*train, f"s3://{S3_BUCKET}/nothing", "--data", "packed"],
                         "nothing/manifest.json does not exist"),
        "changed shard": ([*train, changed, "--data", "packed"], "changed/val-00000.parquet does not match"),
        "missing shard": ([*train, str(cut), "--data", "packed"], "test-00000.parquet is listed in"),
        "wrong task": ([*train, str(whole), "--data", "localization-packed", "--task", "localize"],
                       "holds classify data; train it with --data packed"),
        "not a pack": ([*train, str(src), "--data", "packed"], "manifest.json does not exist"),
    }
    # The first through the console script, the others in this process (cheaper).
    for i, (case, (argv, expected)) in enumerate(cases.items()):
        if i == 0:
            proc = waldo.run(*argv, cwd=tmp_path)
            code, err = proc.returncode, proc.stderr
        else:
            code, _, err = waldo_main(capsys, *argv)
        assert expected in user_error_line(code, err), case


def test_a_packs_overlap_is_stored_and_guards_training_from_it(tmp_path) -> None:
    """`waldo data pack` compares the splits by content as training would and stores the result
    in the manifest; training from the pack is refused as from the folder. A pack from before
    the manifest stored it still reads (its digest matches) and gets the same count from its
    images."""
    src = photo_folder(tmp_path / "photos", per_class=8)
    for path in sorted((src / "c0").glob("[0-9]*.jpg")):  # c2 holds copies of c0's images too
        (src / "c2" / f"copy-{path.name}").write_bytes(path.read_bytes())
    folder = FolderDataModule(data_dir=src, image_size=32)
    folder.setup("fit")
    assert folder.split_overlap.in_test >= 1
    manifest = pack(FolderDataModule(data_dir=src, image_size=32), str(tmp_path / "p"))
    assert manifest.overlap == folder.split_overlap
    packed = PackedDataModule(data_dir=str(tmp_path / "p"), image_size=32)
    packed.setup("fit")
    assert packed.split_overlap == manifest.overlap
    overlap = manifest.overlap
    with pytest.raises(WaldoError, match=f"{overlap.in_test} of {overlap.test} test images"):
        check_split_overlap(TrainSpec(data="packed"), packed)

    old = manifest.model_copy(update={"overlap": None})
    old.digest = old.compute_digest()
    assert old.digest == hashlib.sha256(json.dumps(
        manifest.model_dump(exclude={"digest", "overlap"}), sort_keys=True).encode()).hexdigest()
    (tmp_path / "p" / "manifest.json").write_text(old.model_dump_json(exclude={"overlap"}))
    again = PackedDataModule(data_dir=str(tmp_path / "p"), image_size=32)
    again.setup("fit")
    assert (again.split_overlap.in_test, again.split_overlap.test) == (manifest.overlap.in_test,
                                                                       manifest.overlap.test)
