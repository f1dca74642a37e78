"""The model repository on disk: `<output>/<name>/<version>/{model.onnx, modelcard.json}`.

The card goes into the ONNX file's metadata too, so the file describes itself. Versions are
integers; a version folder appears whole (written aside, then renamed) and is never replaced.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from training.errors import WaldoError
from training.export.card import CARD_FILE, MODEL_FILE, ONNX_METADATA_KEY, ModelCard


def embed_card(model: onnx.ModelProto, card: ModelCard) -> None:
    """Put the card into the model's metadata (replacing an older one) and its version into
    the model's `model_version` field."""
    kept = [p for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=ONNX_METADATA_KEY, value=card.model_dump_json())
    model.model_version = int(card.version) if card.version.isdigit() else 0
    model.doc_string = f"{card.name} v{card.version}: {card.architecture} ({card.task})"


def next_version(root: Path) -> int:
    """One more than the highest integer version folder under `root` (1 when none)."""
    numbers = [int(p.name) for p in root.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(numbers, default=0) + 1


def write_version(model: onnx.ModelProto, card_for: Callable[[int], ModelCard], *,
                  output: str | Path, name: str,
                  version: int | None = None) -> tuple[Path, ModelCard]:
    """Write `<output>/<name>/<version>/{model.onnx, modelcard.json}` and return the folder
    and the card written.

    `card_for(version)` makes the card of that version (`training.export.card.build_card`
    with everything else bound), so the number in the card is the folder's. The files are
    written to a hidden folder and renamed into place, so a reader never sees half a version
    and an existing version is never replaced. Without `version`, the next free number is taken.
    """
    root = Path(output) / name
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(5):  # another export may take the number between the scan and the rename
        number = version if version is not None else next_version(root)
        card = card_for(number)
        if card.name != name or card.version != str(number):
            raise ValueError(f"card_for({number}) made the card of {card.name!r} version "
                             f"{card.version}, not of {name!r} version {number}")
        embed_card(model, card)
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
        try:
            (tmp / MODEL_FILE).write_bytes(model.SerializeToString())
            (tmp / CARD_FILE).write_text(card.model_dump_json(indent=2) + "\n")
            os.rename(tmp, root / str(number))
            return root / str(number), card
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (root / str(number)).is_dir():
                raise
            if version is not None:
                raise WaldoError(f"{root / str(number)} already exists; a version is never "
                                 "replaced (choose another --output or --name)") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    raise WaldoError(f"could not claim a new version folder under {root}; try again")
