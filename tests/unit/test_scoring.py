"""Offline scoring's parts that need no server: SOURCE arguments as images, committed parts and
what they cover, the spec and the CLI's refusals. (Against real servers, and the answers
against the service's: tests/integration/test_batch_predict.py.)"""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from support import user_error_line, waldo_main

from training.errors import WaldoError
from training.scoring.sources import expand
from training.scoring.writer import Output, Problem, columns, part_name
from training.spec import PredictSpec

SETTINGS = {"model": "cnn", "version": "1", "task": "classify", "top_k": 2, "threshold": 0.5}


def test_sources_are_walked_listed_and_each_image_is_scored_once(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/2.png", "a/1.JPG", "a/b/0.png", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    listing = tmp_path / "lists" / "todo.txt"
    listing.parent.mkdir()
    listing.write_text(f"# today\n\n../a/2.png\n{tmp_path / 'elsewhere.png'}\ns3://bucket/k.png\n")
    sources = expand([str(tmp_path / "a"), str(listing), str(tmp_path / "a" / "1.JPG")])
    a = tmp_path / "a"
    assert [i.path for i in sources.items] == [str(a / "1.JPG"), str(a / "2.png"), str(a / "b" / "0.png"),
                                               str(tmp_path / "elsewhere.png"), "s3://bucket/k.png"]
    assert [(d["kind"], d["images"], d["new"]) for d in sources.described] == [
        ("folder", 3, 3), ("list", 3, 2), ("image", 1, 0)]


@pytest.mark.parametrize("make, expected", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "holds no images"),
])
def test_a_source_that_is_nothing_to_score_is_one_line(tmp_path, make, expected):
    with pytest.raises(WaldoError, match=expected):
        expand([str(make(tmp_path))])


def test_parts_are_committed_whole_and_say_what_they_cover(tmp_path):
    output = Output(str(tmp_path / "out"))
    output.check()
    output.prepare()
    (tmp_path / "out" / ".part-left-by-a-killed-run.tmp").write_bytes(b"half")
    output.prepare()  # removes it
    result = {"label": "1", "probability": 0.75, "top_k": [{"label": "1", "probability": 0.75},
                                                            {"label": "0", "probability": 0.25}]}
    data = columns("classify", "cnn", "1", ["/x/a.png"], [(28, 28)], [result])
    output.commit("classify", data, [("/x/bad.png", "empty (0 bytes)")], SETTINGS, part_name("r1", 0))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["part-r1-00000.parquet"]
    done = output.done(SETTINGS)
    assert done.paths == {"/x/a.png", "/x/bad.png"} and done.scored == 1
    assert done.errors == [("/x/bad.png", "empty (0 bytes)")]
    with pytest.raises(WaldoError, match=r"another run \(version '1' \(this run: '2'\)\)"):
        output.done({**SETTINGS, "version": "2"})


def test_an_image_that_could_not_be_read_is_tried_again_by_the_next_run(tmp_path):
    """A read failure (a lost connection, an expired credential, a file missing for now) is no
    verdict on the image: the next run scores it, and its answer then replaces the error. An
    image that was read and did not decode stays done."""
    output = Output(str(tmp_path / "out"))
    output.check()
    output.prepare()
    result = {"label": "1", "probability": 1.0, "top_k": [{"label": "1", "probability": 1.0}]}
    output.commit("classify", columns("classify", "cnn", "1", [], [], []),
                  [Problem("/x/flaky.png", "cannot be read: connection reset", True),
                   Problem("/x/gone.png", "does not exist", True),
                   Problem("/x/bad.png", "empty (0 bytes)")], SETTINGS, part_name("r1", 0))
    first = output.done(SETTINGS)
    assert first.paths == {"/x/bad.png"} and first.unread == 2 and len(first.errors) == 3
    # the next run: the flaky one is read and scored, the gone one is still missing
    output.commit("classify", columns("classify", "cnn", "1", ["/x/flaky.png"], [(28, 28)], [result]),
                  [Problem("/x/gone.png", "does not exist", True)], SETTINGS, part_name("r2", 0))
    second = output.done(SETTINGS)
    assert second.paths == {"/x/bad.png", "/x/flaky.png"} and second.scored == 1
    assert sorted(second.errors) == [("/x/bad.png", "empty (0 bytes)"), ("/x/gone.png", "does not exist")]
    assert second.unread == 1


def test_the_spec_takes_one_source_or_many_and_refuses_none():
    spec = PredictSpec(model="models:/cnn@production", sources="s3://b/today", output="/scores")
    assert spec.sources == ["s3://b/today"] and spec.top_k == 5 and spec.workers == 0
    with pytest.raises(ValidationError, match="sources"):
        PredictSpec(model="m", sources=[], output="o")
    with pytest.raises(ValidationError, match="top_k"):
        PredictSpec(model="m", sources=["s"], output="o", top_k=0)


@pytest.mark.parametrize("argv, expected", [
    (["--checkpoint", "x.ckpt", "--output", "o", "a.png"], "--output belong to --model"),
    (["--json", "--model", "m", "--output", "o", "a.png"], "--json prints the answers of --checkpoint"),
    (["--output", "o", "a.png"], "give --model MODEL --output DEST SOURCE..."),
    (["--model", "m", "--output", "o"], "field 'sources'"),
    (["--checkpoint", "x.ckpt"], "--checkpoint needs IMAGE files"),
])
def test_predict_flags_that_do_not_go_together_are_one_line(capsys, argv, expected):
    status, out, err = waldo_main(capsys, "predict", *argv)
    assert expected in user_error_line(status, err) and out == ""


def test_a_pack_shard_that_cannot_be_read_is_every_rows_reason_and_is_read_once(tmp_path):
    """Its rows get the reason as text (an unread image: the next run tries them again), from
    one attempt: a batch of a broken shard's rows does not read it once per row."""
    from training.scoring import sources

    shard = tmp_path / "shard-00000.parquet"
    shard.write_bytes(b"not parquet")
    sources.forget_shards()
    items = [sources.Item(f"photo{row}.png", str(shard), row) for row in range(3)]
    blobs = sources.read_blobs(items)
    assert len(set(blobs)) == 1 and blobs[0].startswith(f"cannot read its pack shard {shard}")
    assert sources._shard_images.cache_info().misses == 1
    sources.forget_shards()
    assert sources._shard_images.cache_info().currsize == 0
