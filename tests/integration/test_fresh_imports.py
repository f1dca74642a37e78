"""Light modules stay light, checked where it counts: in a fresh interpreter, as a process of
the inference service or the jobs API starts. And no model family module goes unregistered
(importing it in this process would register it and hide the mistake)."""

from __future__ import annotations

import pkgutil

import pytest
from support import REPO_ROOT

HEAVY = {"torch", "torchvision", "pytorch_lightning", "lightning", "mlflow", "ray"}
NOT_FAMILIES = {"heads", "pretrained"}  # training.models modules that hold no model family

# --- light modules, in a fresh interpreter ----------------------------------------------------
# (what the probe runs, what it must have imported, what it must not have)
PROBES = {
    "training": ("import training, training.spec\nspec = training.spec.build_spec(overrides={'epochs': 2})",
                 {"training", "pydantic"}, HEAVY),
    "training.spec": ("import training.spec\nspec = training.spec.build_spec(overrides={'epochs': 2})",
                      {"training", "pydantic"}, HEAVY),
    "training.errors": ("import training.errors, training.spec\n"
                        "spec = training.spec.build_spec(overrides={'epochs': 2})",
                        {"training", "pydantic"}, HEAVY),
    "serving.processing": ("import serving.processing, serving.modelcard",
                           {"serving", "numpy", "PIL"}, HEAVY | {"training"}),
    # the pictures training logs with runs, drawable by the service too: no torch, no matplotlib
    "serving.pictures": ("import serving.pictures", {"serving", "numpy", "PIL"},
                         HEAVY | {"training", "matplotlib"}),
    # mlflow only once a models:/ URI is resolved (tests/integration/test_serving_registry.py)
    "serving.repository": (f"import serving.repository\nserving.repository.scan({str(REPO_ROOT)!r})",
                           {"serving", "pydantic"}, HEAVY | {"training"}),
    # offline scoring: what its Ray Data tasks and actors import, and a pack's manifest
    "training.scoring": ("import training.scoring.raydata, training.scoring.local, "
                         "training.data.packmanifest, training.running.rayinit",
                         {"training", "numpy", "PIL"}, HEAVY - {"ray"}),
}


@pytest.mark.parametrize("module", list(PROBES))
def test_light_modules_import_no_heavy_stack(module, loaded_modules):
    script, expected, forbidden = PROBES[module]
    loaded = loaded_modules(script)
    assert expected <= loaded, f"the probe did not import {sorted(expected - loaded)}"
    assert not loaded & forbidden, f"{module} pulled in {sorted(loaded & forbidden)}"


def test_ray_data_decode_task_needs_neither_torch_nor_lightning(loaded_modules, tmp_path):
    """What a fresh Ray Data worker does with a distributed run's decoder: unpickle it (made on
    the driver) and decode a batch of JPEGs. Importing Lightning there cost 6-7 s per worker."""
    import io
    import pickle

    from PIL import Image

    from training.data.decode import DecodeBatch

    jpegs = []
    for shade in (40, 200):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (shade, 0, 0)).save(buffer, "JPEG")
        jpegs.append(buffer.getvalue())
    (tmp_path / "decoder.pkl").write_bytes(pickle.dumps(DecodeBatch(["dark", "light"], 16)))
    script = ("import pickle, numpy as np\n"
              f"decode = pickle.loads(open({str(tmp_path / 'decoder.pkl')!r}, 'rb').read())\n"
              f"batch = {{'image': np.array({jpegs!r}, dtype=object), "
              "'label': np.array(['light', 'dark'])}\n"
              "out = decode(batch)\n"
              "assert out['x'].shape == (2, 3, 16, 16) and out['x'].dtype == np.uint8, out['x'].shape\n"
              "assert out['y'].tolist() == [1, 0] and out['x'][0, 0].mean() < out['x'][1, 0].mean()\n")
    loaded = loaded_modules(script)
    assert {"training", "numpy", "PIL"} <= loaded
    assert not loaded & HEAVY, f"the decode task pulled in {sorted(loaded & HEAVY)}"


def test_every_family_module_registers_a_model(loaded_modules):
    """A family file that `training.models` never imports registers nothing, silently.

    Checked in a fresh interpreter (`loaded_modules`): importing the module here would register
    it and hide the mistake. The script asserts, so its message is the failure's.
    """
    script = (
        "import pkgutil, training.models as m\n"
        "from training.models import _api\n"
        f"skip = {sorted(NOT_FAMILIES)!r}\n"
        "families = {f'training.models.{i.name}' for i in pkgutil.iter_modules(m.__path__)\n"
        "            if not i.name.startswith('_') and i.name not in skip}\n"
        "assert families, 'no model family modules found'\n"
        "registered = {info.builder.__module__ for info in _api._MODELS.values()}\n"
        "silent = sorted(families - registered)\n"
        "assert not silent, f'model family modules that register nothing: {silent}'\n"
    )
    assert {"training", "torch"} <= loaded_modules(script)


def test_family_scan_sees_the_package():
    """Guard for the test above: pkgutil finds the files the package is made of."""
    import training.models as models

    names = {i.name for i in pkgutil.iter_modules(models.__path__)}
    assert {"_api", "simple", "resnet"} <= names
    assert NOT_FAMILIES <= names  # a renamed module must not stay excused here
