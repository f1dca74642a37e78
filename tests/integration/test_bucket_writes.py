"""Writing to a bucket (issue 24, item 3) on a real S3 server (moto_server on 127.0.0.1): no
writer creates a bucket (a typo would make a new one), and a destination that cannot be written
is one line with exit 2 before any work starts: before `waldo data pack` reads a single image,
before `waldo train` loads its data."""

from __future__ import annotations

import time

import pytest
from support import S3_BUCKET
from support.images import photo_folder
from support.processes import clean_env, free_port

from training.data.folder import FolderDataModule
from training.data.packed import pack
from training.errors import WaldoError


@pytest.mark.slow  # four `waldo` processes at once: half a minute on 2 cores
def test_no_writer_creates_a_bucket_and_each_says_so_first(s3, tmp_path, waldo) -> None:
    photos = photo_folder(tmp_path / "photos", per_class=4)  # with a broken file the check would name
    env = clean_env()
    dead = clean_env(AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    train = ["train", "--model", "cnn", "--epochs", "1", "--no-progress-bar", "--data", "folder",
             "--data-dir", str(photos), "--image-size", "16"]
    cases = {  # case: (argv, environment, what the one line must say)
        "pack into a new bucket": (["data", "pack", str(photos), "s3://brandnew/p"], env,
                                   "cannot write to destination s3://brandnew/p: bucket 'brandnew' "
                                   "does not exist; create it first"),
        "checkpoints into a new bucket": ([*train, "--storage", "s3://brandnew2/runs"], env,
                                          "cannot write to --storage s3://brandnew2/runs: bucket "
                                          "'brandnew2' does not exist"),
        "pack with no server": (["data", "pack", str(photos), f"s3://{S3_BUCKET}/p"], dead,
                                f"cannot write to destination s3://{S3_BUCKET}/p"),
        "train with no server": ([*train, "--storage", f"s3://{S3_BUCKET}/runs"], dead,
                                 f"cannot write to --storage s3://{S3_BUCKET}/runs"),
    }
    started = time.monotonic()
    procs = {case: waldo.start(*argv, cwd=tmp_path, env=case_env)
             for case, (argv, case_env, _) in cases.items()}
    for case, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert proc.returncode == 2, (case, err[-2000:])
        # One line: no image was read first (photos/c0/broken.jpg would have been named).
        assert len(lines) == 1 and cases[case][2] in lines[0] and "Traceback" not in err, (case, lines)
    assert time.monotonic() - started < 90  # a dead endpoint: seconds, not a hang
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}  # the session's server: others' too
    assert S3_BUCKET in buckets and not buckets & {"brandnew", "brandnew2"}  # nothing created
    assert "Contents" not in s3.list_objects_v2(Bucket=S3_BUCKET)  # the probe left nothing behind


def test_pack_checks_the_destination_before_it_reads_the_source(s3, tmp_path) -> None:
    class Unread(FolderDataModule):
        def records(self):
            raise AssertionError("the source was read before the destination was checked")

    with pytest.raises(WaldoError, match="bucket 'brandnew' does not exist"):
        pack(Unread(data_dir=tmp_path), "s3://brandnew/p")
    manifest = pack(FolderDataModule(data_dir=photo_folder(tmp_path / "photos", per_class=4)),
                    f"s3://{S3_BUCKET}/packs/p")  # an existing bucket: written as before
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=S3_BUCKET)["Contents"]}
    assert "packs/p/manifest.json" in keys and not any("waldo-write-check" in k for k in keys)
    assert sum(split.count for split in manifest.splits.values()) == 12
