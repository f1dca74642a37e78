"""The storage contract: one resolution of `--storage` and of the tracking URI for every
runner, so processes in other working folders (Ray workers, Tune trials) write where the user
meant."""

from __future__ import annotations

import pytest

from training.tracking import storage
from training.tracking.runs import absolute_tracking_uri


def test_local_storage_becomes_absolute_and_uris_are_kept(in_tmp):
    assert storage.storage_root(None) == str(in_tmp / "waldo_runs")
    assert storage.storage_root("runs/x") == str(in_tmp / "runs" / "x")
    assert storage.storage_root("file://" + str(in_tmp / "a")) == str(in_tmp / "a")
    # Path("s3://b/x") would be "s3:/b/x": a local folder named "s3:".
    assert storage.storage_root("s3://bucket/waldo/") == "s3://bucket/waldo"
    assert storage.join("s3://bucket/waldo", "run", "/checkpoints/") == "s3://bucket/waldo/run/checkpoints"
    assert storage.with_scheme("s3://bucket/waldo", "bucket/waldo/x") == "s3://bucket/waldo/x"
    assert storage.with_scheme(str(in_tmp), str(in_tmp / "x")) == str(in_tmp / "x")


def test_relative_tracking_uris_become_absolute(in_tmp, monkeypatch):
    assert absolute_tracking_uri(None) == f"sqlite:///{in_tmp / 'mlflow.db'}"
    assert absolute_tracking_uri("sqlite:///runs.db") == f"sqlite:///{in_tmp / 'runs.db'}"
    assert absolute_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_tracking_uri("mlruns") == (in_tmp / "mlruns").as_uri()
    assert absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert absolute_tracking_uri(None) == f"sqlite:///{in_tmp / 'env.db'}"


def test_local_fetch_and_the_run_record(tmp_path):
    target = tmp_path / "deep" / "best.ckpt"
    target.parent.mkdir()
    target.write_bytes(b"weights")
    assert storage.fetch(str(target), tmp_path / "downloads") == target  # local: no copy
    with pytest.raises(FileNotFoundError):
        storage.fetch(str(tmp_path / "none.ckpt"), tmp_path)

    class FakeRun:  # the one method of training.tracking.runs.Run the record uses
        tags: dict[str, str] = {}

        def set_tags(self, tags):
            self.tags.update(tags)

    run = FakeRun()
    storage.record_best_checkpoint(run, str(target), "best/best.ckpt")
    assert storage.best_checkpoint_record(run.tags) == (str(target), "best/best.ckpt")
    assert storage.best_checkpoint_record({}) == (None, None)


def test_file_uris_and_unusable_schemes(in_tmp):
    from training.errors import WaldoError

    assert storage.storage_root(f"file://{in_tmp}/a") == str(in_tmp / "a")
    assert storage.storage_root(f"file:{in_tmp}/b") == str(in_tmp / "b")
    assert storage.storage_root(f"file://localhost{in_tmp}/c") == str(in_tmp / "c")
    # A typo in the scheme is a clear error before any data loads, not a traceback later.
    with pytest.raises(WaldoError, match=r"cannot use storage 's4://b/x'.*s3://bucket/path"):
        storage.storage_root("s4://b/x")


def test_resolve_locations_makes_every_path_of_a_spec_absolute(in_tmp):
    from training.running.steps import resolve_locations
    from training.spec import TrainSpec

    spec = resolve_locations(TrainSpec(data="folder", data_dir="pets", storage="runs",
                                       tracking_uri="sqlite:///m.db"))
    assert (spec.data_dir, spec.storage) == (str(in_tmp / "pets"), str(in_tmp / "runs"))
    assert spec.tracking_uri == f"sqlite:///{in_tmp / 'm.db'}"
    assert resolve_locations(spec) == spec  # idempotent: every runner may call it
    assert resolve_locations(TrainSpec()).data_dir is None  # the data set's own default
