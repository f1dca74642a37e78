"""Ray Data ingest for distributed runs: a `folder` and a `packed` data set (local, and in a
bucket on a real S3 server, moto_server on 127.0.0.1) are listed, split and normalized exactly as
in-process training does it, decoded by Ray Data tasks, and split among two Ray Train workers
whose per-rank sample counts add up to the training split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from support import S3_BUCKET
from support.images import box_folder, photo_folder, upload_folder

from training.data.folder import FolderDataModule
from training.data.localization import LocalizationFolderDataModule
from training.data.packed import LocalizationPackedDataModule, PackedDataModule, pack

# On the session's local Ray (the `local_ray` fixture, tests/conftest.py): it has a CPU for the
# data tasks beside two training workers.


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return photo_folder(tmp_path_factory.mktemp("photos") / "photos", per_class=24)


def _fingerprints(rows) -> list[tuple[int, float]]:
    """Order-free identity of decoded (image, label) rows."""
    return sorted((int(y), float(np.asarray(x, dtype=np.float64).sum())) for x, y in rows)


def test_the_plan_is_the_in_process_data(local_ray, photos, s3, tmp_path) -> None:
    from training.data.raydata import plan

    pack(FolderDataModule(data_dir=photos, image_size=32), str(tmp_path / "p"))
    bucket_folder = upload_folder(s3, photos, S3_BUCKET, "plan/photos")
    for source in (FolderDataModule(data_dir=photos, image_size=32),
                   PackedDataModule(data_dir=str(tmp_path / "p"), image_size=32),
                   FolderDataModule(data_dir=bucket_folder, image_size=32)):
        reference = FolderDataModule(data_dir=photos, image_size=32)
        reference.setup("fit")
        ingest, datasets = plan(source, augment="basic", random_erasing=0.0)
        assert ingest.state["labels"] == reference.labels, source.name
        np.testing.assert_allclose(ingest.state["mean"], reference.mean, rtol=0, atol=1e-6)
        np.testing.assert_allclose(ingest.state["std"], reference.std, rtol=0, atol=1e-6)
        assert ingest.counts == {"train": len(reference.train_set), "val": len(reference.val_set),
                                 "test": len(reference.test_set)}
        assert ingest.facts.sizes == ingest.counts
        for split, expected in (("val", reference.val_set), ("test", reference.test_set)):
            rows = [(r["x"], r["y"]) for r in datasets[split].take_all()]
            assert _fingerprints(rows) == _fingerprints([expected[i] for i in range(len(expected))]), split
        if source.data_location == bucket_folder:  # listed, checked and read, never copied
            assert source.skipped_images == [f"{bucket_folder}/c0/broken.jpg"]
            assert source._mirror is None
        train = datasets["train"].take(4)
        assert train[0]["x"].shape == (3, 32, 32) and train[0]["x"].dtype == np.uint8


def test_decoded_images_are_cached_when_they_fit_and_augmented_anew_every_epoch(
        local_ray, photos, tmp_path) -> None:
    from ray.data.dataset import MaterializedDataset

    from training.data.raydata import cache_decoded, plan

    pack(FolderDataModule(data_dir=photos, image_size=32), str(tmp_path / "p"))
    assert cache_decoded({"train": 1000}, 32) and not cache_decoded({"train": 10**9}, 224)
    source = PackedDataModule(data_dir=str(tmp_path / "p"), image_size=32)
    _, cached = plan(source, augment="basic", random_erasing=0.0)  # small: cached by default
    _, streamed = plan(PackedDataModule(data_dir=str(tmp_path / "p"), image_size=32),
                       augment="basic", random_erasing=0.0, cache=False)
    assert isinstance(cached["val"], MaterializedDataset)
    assert not isinstance(streamed["val"], MaterializedDataset)
    for split in ("val", "test"):  # the same images either way
        assert _fingerprints([(r["x"], r["y"]) for r in cached[split].take_all()]) == \
            _fingerprints([(r["x"], r["y"]) for r in streamed[split].take_all()])
    # The training split's augmentation runs after the cache: each epoch draws again.
    first, second = ([(r["x"], r["y"]) for r in cached["train"].take_all()] for _ in range(2))
    assert sorted(int(y) for _, y in first) == sorted(int(y) for _, y in second)
    assert _fingerprints(first) != _fingerprints(second)


@pytest.mark.trains
def test_two_workers_train_from_packed_shards_in_a_bucket(local_ray, photos, s3, tmp_path) -> None:
    """The source with the longest path (Parquet shards in a bucket, checked against their
    manifest, decoded by Ray Data tasks): two workers train on it, each on an even share, every
    epoch. The other sources feed the same plan (`test_the_plan_is_the_in_process_data`), so
    training on each of them too would test nothing more."""
    from training.running.pipeline import run
    from training.spec import TrainSpec

    bucket_pack = f"s3://{S3_BUCKET}/photos-packed"
    pack(FolderDataModule(data_dir=photos, image_size=32), bucket_pack)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run(TrainSpec(model="cnn", epochs=2, image_size=32, workers=2, tracking_uri=tracking,
                           storage=str(tmp_path / "runs"), experiment="ray-data", progress_bar=False,
                           seed=0, data="packed", data_dir=bucket_pack))
    client = MlflowClient(tracking)
    reference = FolderDataModule(data_dir=photos, image_size=32)
    reference.setup("fit")
    share = len(reference.train_set) // 2  # Ray Train splits evenly (equal shards)
    for key in ("train_samples_rank0", "train_samples_rank1"):
        assert [m.value for m in client.get_metric_history(result.run_id, key)] == [share, share], key
    metrics = client.get_run(result.run_id).data.metrics
    assert 0.0 <= metrics["data_wait_fraction"] <= 1.0
    assert 0.0 <= metrics["test_acc"] <= 1.0


def test_a_pack_unlike_its_manifest_stops_the_plan_with_one_line(local_ray, photos, s3, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.data.raydata import plan
    from training.errors import WaldoError

    cut, changed, altered = tmp_path / "cut", f"s3://{S3_BUCKET}/changed", tmp_path / "altered"
    for dest in (str(cut), changed, str(altered)):
        pack(FolderDataModule(data_dir=photos, image_size=32), dest)
    (cut / "test-00000.parquet").unlink()
    s3.put_object(Bucket=S3_BUCKET, Key="changed/val-00000.parquet", Body=b"cut short")
    # One image broken inside a shard that still parses, with the rows the manifest says.
    shard = altered / "train-00000.parquet"
    table = pq.read_table(shard)
    images = table.column("image").to_pylist()
    table = table.set_column(table.schema.get_field_index("image"), "image",
                             pa.array([b"not an image", *images[1:]], type=table.schema.field("image").type))
    pq.write_table(table, shard)
    for location, expected in ((str(cut), "test-00000.parquet is listed in"),
                               (changed, f"{changed}/val-00000.parquet does not match"),
                               (str(altered), f"{shard} does not match {altered}/manifest.json "
                                              "(sha256 differs)")):
        with pytest.raises(WaldoError) as caught:
            plan(PackedDataModule(data_dir=location, image_size=32), augment="none", random_erasing=0.0)
        assert expected in str(caught.value) and "\n" not in str(caught.value)


def _box_fingerprints(rows) -> list[tuple]:
    """Order-free identity of decoded (image, target vector) rows."""
    return sorted((tuple(np.round(np.asarray(y, dtype=np.float64), 5)),
                   float(np.asarray(x, dtype=np.float64).sum())) for x, y in rows)


@pytest.mark.trains
def test_localization_streams_with_its_boxes_and_trains_on_two_workers(local_ray, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from training.data.raydata import plan
    from training.running.pipeline import run
    from training.spec import TrainSpec

    boxes = box_folder(tmp_path / "boxes", count=40)
    pack(LocalizationFolderDataModule(data_dir=boxes, image_size=32), str(tmp_path / "packed"))
    reference = LocalizationFolderDataModule(data_dir=boxes, image_size=32)
    reference.setup("fit")
    for source in (LocalizationFolderDataModule(data_dir=boxes, image_size=32),
                   LocalizationPackedDataModule(data_dir=str(tmp_path / "packed"), image_size=32)):
        ingest, datasets = plan(source, augment="basic", random_erasing=0.0)
        assert ingest.state["labels"] == reference.labels == ["k0", "k1", "k2"], source.name
        np.testing.assert_allclose(ingest.state["mean"], reference.mean, rtol=0, atol=1e-6)
        np.testing.assert_allclose(ingest.state["std"], reference.std, rtol=0, atol=1e-6)
        assert ingest.counts == {"train": len(reference.train_set), "val": len(reference.val_set),
                                 "test": len(reference.test_set)}
        for split, expected in (("val", reference.val_set), ("test", reference.test_set)):
            rows = [(r["x"], r["y"]) for r in datasets[split].take_all()]
            assert _box_fingerprints(rows) == _box_fingerprints(
                [expected[i] for i in range(len(expected))]), (source.name, split)
        row = datasets["train"].take(1)[0]
        assert row["x"].shape == (3, 32, 32) and row["y"].shape == (8,) and row["y"].dtype == np.float32

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run(TrainSpec(task="localize", model="cnn", data="localization-folder", data_dir=str(boxes),
                           epochs=1, image_size=32, workers=2, tracking_uri=tracking, seed=0,
                           storage=str(tmp_path / "runs"), experiment="ray-data-boxes", progress_bar=False))
    metrics = MlflowClient(tracking).get_run(result.run_id).data.metrics
    share = len(reference.train_set) // 2
    assert metrics["train_samples_rank0"] == metrics["train_samples_rank1"] == share
    assert "test_iou" in metrics or "test_loss" in metrics
