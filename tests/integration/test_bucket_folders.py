"""A `folder` data set in a bucket (`--data-dir s3://...`) on a real S3 server (moto_server on
127.0.0.1): in-process training reads a local mirror of it with the local folder's labels,
split and statistics, names a corrupt object by its URL, and every way the bucket can be wrong
(no bucket, an empty prefix, wrong credentials, no server) is one line with exit 2, in seconds."""

from __future__ import annotations

import time

import numpy as np
import pytest
from support import S3_BUCKET
from support.images import photo_folder, upload_folder
from support.processes import clean_env, free_port, start_server

from training.data.folder import FolderDataModule


def _relative(records, root: str) -> list[tuple[str, int]]:
    return [(str(path)[len(root):].lstrip("/"), target) for path, target in records]


def test_a_bucket_folder_is_the_local_folder_through_a_mirror(s3, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WALDO_DATA_CACHE", str(tmp_path / "cache"))
    photos = photo_folder(tmp_path / "photos", per_class=12)
    url = upload_folder(s3, photos, S3_BUCKET, "users/photos")
    local = FolderDataModule(data_dir=photos, image_size=32)
    remote = FolderDataModule(data_dir=url, image_size=32)
    (local_labels, local_splits), (labels, splits) = local.records(), remote.records()
    assert labels == local_labels == ["c0", "c1", "c2"]
    for split in ("train", "val", "test"):
        mirrored = _relative(splits[split], str(remote._mirror))
        assert mirrored == _relative(local_splits[split], str(photos)), split
    np.testing.assert_allclose(remote.mean, local.mean, atol=1e-7)
    np.testing.assert_allclose(remote.std, local.std, atol=1e-7)
    assert remote.skipped_images == [f"{url}/c0/broken.jpg"]  # named by its object, not its copy

    # The next run sees the bucket as it is now: a deleted object leaves the mirror too.
    s3.delete_object(Bucket=S3_BUCKET, Key="users/photos/c2/0.jpg")
    again = FolderDataModule(data_dir=url, image_size=32)
    _, now = again.records()
    assert sum(map(len, now.values())) == sum(map(len, splits.values())) - 1
    assert not (again._mirror / "c2" / "0.jpg").exists()


@pytest.mark.trains
def test_train_in_process_from_a_bucket_folder(s3, tmp_path, waldo) -> None:
    url = upload_folder(s3, photo_folder(tmp_path / "photos", per_class=12), S3_BUCKET, "cli/photos")
    env = clean_env(WALDO_DATA_CACHE=str(tmp_path / "cache"))
    trained = waldo.run("train", "--model", "cnn", "--data", "folder", "--data-dir", url, "--epochs", "1",
                        "--image-size", "32", "--no-progress-bar", cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "test_acc" in trained.stdout
    assert f"skipping unreadable image '{url}/c0/broken.jpg'" in trained.stderr


@pytest.fixture
def s3_with_auth(tmp_path):
    """A second moto_server that checks credentials: it knows no access key at all, so every
    key is a wrong one."""
    from support import BIN

    server = start_server(lambda port: [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                          workdir=tmp_path, ready="/moto-api/",
                          env=clean_env(INITIAL_NO_AUTH_ACTION_COUNT="0"))
    yield server.url
    server.stop()


@pytest.mark.slow  # four `waldo train` processes at once: half a minute on 2 cores
def test_bad_buckets_are_one_line_with_exit_2(s3, s3_with_auth, tmp_path, waldo) -> None:
    train = ["train", "--model", "cnn", "--epochs", "1", "--no-progress-bar", "--data", "folder",
             "--data-dir"]
    env = clean_env(WALDO_DATA_CACHE=str(tmp_path / "cache"))
    cases = {  # case: (argv, environment, what the one line must say)
        "no bucket": ([*train, "s3://no-such-bucket/p"], env, "cannot list s3://no-such-bucket/p"),
        "empty prefix": ([*train, f"s3://{S3_BUCKET}/nothing"], env,
                         f"s3://{S3_BUCKET}/nothing holds no objects"),
        "wrong credentials": ([*train, f"s3://{S3_BUCKET}/p"], {**env, "AWS_ENDPOINT_URL": s3_with_auth},
                              "access denied (check AWS_ACCESS_KEY_ID"),
        "no server": ([*train, f"s3://{S3_BUCKET}/p"],
                      {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, f"cannot list s3://{S3_BUCKET}/p"),
    }
    started = time.monotonic()
    procs = {case: waldo.start(*argv, cwd=tmp_path, env=case_env)
             for case, (argv, case_env, _) in cases.items()}
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert proc.returncode == 2, (case, err[-2000:])
        assert len(lines) == 1 and cases[case][2] in lines[0] and "Traceback" not in err, (case, lines)
    assert time.monotonic() - started < 90  # no hang on a dead endpoint: seconds, not minutes


def test_keys_with_dot_segments_are_skipped_and_never_leave_the_mirror(s3, tmp_path, monkeypatch,
                                                                        caplog) -> None:
    """S3 keys are plain strings: `c0/../c1/x.jpg` would be listed under class c0 and copied into
    c1, and `c0/../../../../x.jpg` out of the mirror's folder, onto the machine."""
    import logging

    monkeypatch.setenv("WALDO_DATA_CACHE", str(tmp_path / "cache"))
    url = upload_folder(s3, photo_folder(tmp_path / "photos", per_class=6), S3_BUCKET, "odd/photos")
    good = (tmp_path / "photos" / "c1" / "0.jpg").read_bytes()
    odd = ["c0/../c1/moved.jpg", "c0/../../../../../escaped.jpg", "c2/./here.jpg", "c2//twice.jpg"]
    for key in odd:
        s3.put_object(Bucket=S3_BUCKET, Key=f"odd/photos/{key}", Body=good)
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=S3_BUCKET, Prefix="odd/")["Contents"]}
    assert {f"odd/photos/{key}" for key in odd} <= listed  # the server keeps them as they are
    dm = FolderDataModule(data_dir=url, image_size=32)
    with caplog.at_level(logging.WARNING, logger="waldo.data"):
        labels, splits = dm.records()
    assert labels == ["c0", "c1", "c2"] and sum(map(len, splits.values())) == 18  # 19 less broken.jpg
    named = [r.getMessage() for r in caplog.records if "path segment" in r.getMessage()]
    assert len(named) == 4 and all(any(key in line for line in named) for key in odd), named
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg")}
    assert not any("escaped" in p or "moved" in p for p in written), written
