"""Checkpoints written before training's modules moved into packages (spec, running, tracking,
commands) still load: `tests/data/cnn-digits-0.1.ckpt` was written by `waldo train --model cnn
--data digits --epochs 1` at version 0.1 with the flat layout. A checkpoint pickles no Waldo
class (its hyperparameters are plain values), and these tests keep it so."""

from __future__ import annotations

import json
import pickletools
import zipfile
from pathlib import Path

from support import REPO_ROOT

from waldo.cli import main

OLD = REPO_ROOT / "tests" / "data" / "cnn-digits-0.1.ckpt"


def pickled_globals(path: Path) -> set[str]:
    """The module-level names a torch checkpoint's pickle refers to."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    ops = list(pickletools.genops(data))
    found = set()
    for i, (op, arg, _) in enumerate(ops):
        if op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.add(f"{ops[i - 2][1]}.{ops[i - 1][1]}")
    return found


def test_the_old_checkpoint_names_no_waldo_module():
    names = pickled_globals(OLD)
    assert names, "the checkpoint's pickle was not read"
    assert not [n for n in names if n.split(".")[0] in ("training", "serving", "services", "waldo")]


def test_an_old_checkpoint_loads_and_predicts(digits, tmp_path, capsys):
    from training.tasks import load_task_file

    task = load_task_file(OLD)
    assert type(task).__name__ == "ClassificationTask"
    assert task.hparams["num_classes"] == 10
    images = []
    for i, (_, png) in enumerate(digits[:4]):
        images.append(tmp_path / f"{i}.png")
        images[-1].write_bytes(png)
    assert main(["predict", "--json", "--checkpoint", str(OLD), *map(str, images)]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["image"] for a in answers] == [str(p) for p in images]
    assert all(0 <= a["probability"] <= 1 and a["label"] in [str(d) for d in range(10)] for a in answers)
