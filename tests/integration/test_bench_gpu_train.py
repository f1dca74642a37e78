"""bench/gpu_train.py on the CPU: `--tiny` runs both paths (Waldo's Trainer and the plain loop)
end to end and writes its figures as JSON, and both paths really trained the steps asked for,
the same way (same first weights, data and optimizer, so the same losses and weight change).
The throughput itself is only worth reading from a GPU run.

Only `--compile off` runs here: compiling even the tiny network (once per path) takes 15 s
with a warm inductor cache and 40 s with a cold one on the 2-core machine, over this test's
budget. The CUDA-only sync count is checked on its parsing of torch's warnings.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import pytest
from support import REPO_ROOT, clean_env

SCRIPT = REPO_ROOT / "bench" / "gpu_train.py"
WARMUP, STEPS = 2, 5


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[dict, str]:
    """(the JSON report, stdout) of one tiny CPU run without compilation."""
    out = tmp_path_factory.mktemp("gpu-train") / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--compile", "off",
         "--warmup-steps", str(WARMUP), "--steps", str(STEPS), "--json", str(out)],
        cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.trains  # bench/gpu_train.py trains a few steps in a subprocess
def test_both_paths_report_throughput_ratio_and_mfu(tiny_run):
    report, _ = tiny_run
    assert [run["compile"] for run in report["runs"]] == [False]
    run = report["runs"][0]
    for path in ("waldo", "plain"):
        figures = run[path]
        assert finite_positive(figures["images_per_s"]), (path, figures)
        assert finite_positive(figures["ms_per_step_median"]), (path, figures)
        assert finite_positive(figures["mfu"]) and figures["mfu"] < 1, (path, figures)
        assert figures["compiles_in_window"] == 0
        assert figures["syncs_per_step"] is None  # counted on CUDA only
    assert run["ratio"] == pytest.approx(run["waldo"]["images_per_s"] / run["plain"]["images_per_s"])
    assert finite_positive(report["flop_per_image"])
    assert report["config"]["steps"] == STEPS and report["config"]["warmup_steps"] == WARMUP


@pytest.mark.trains
def test_both_paths_trained_the_asked_steps_the_same_way(tiny_run):
    report, _ = tiny_run
    waldo, plain = report["runs"][0]["waldo"], report["runs"][0]["plain"]
    for path, figures in (("waldo", waldo), ("plain", plain)):
        assert figures["steps"] == WARMUP + STEPS, (path, figures)
        assert figures["timed_steps"] == STEPS
        assert finite_positive(figures["param_change"]), (path, figures)
        assert math.isfinite(figures["loss_first"]) and math.isfinite(figures["loss_last"])
        # 16 images seen again and again: a network that trains fits them.
        assert figures["loss_last"] < figures["loss_first"], (path, figures)
    # Same first weights, images, order and optimizer: if these drift apart, the two paths no
    # longer do the same work and their ratio compares different things.
    assert waldo["loss_first"] == pytest.approx(plain["loss_first"], abs=1e-2)
    assert waldo["param_change"] == pytest.approx(plain["param_change"], rel=1e-2)
    # Waldo's loader settings are reported (and copied by the plain loop).
    assert set(report["waldo_loader"]) >= {"pin_memory", "num_workers"}


@pytest.mark.trains
def test_prints_the_device_and_the_load_average_beside_the_figures(tiny_run):
    report, stdout = tiny_run
    assert report["device"] == "cpu" and report["device_name"] in stdout
    assert len(report["load_average_start"]) == 3 and len(report["load_average_end"]) == 3
    assert stdout.count("load average") == 2
    assert "waldo img/s" in stdout and "ratio" in stdout


def test_sync_counter_counts_torch_sync_warnings_and_their_lines(monkeypatch):
    """The CUDA sync count reads torch's sync debug warnings; here they are raised by hand."""
    import torch

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from steptiming import SyncCounter

    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    counter = SyncCounter()
    counter.start()
    for _ in range(3):
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
    warnings.warn("something else", UserWarning, stacklevel=1)
    counter.stop()
    counter.stop()  # a second stop changes nothing
    assert modes == ["warn", 0]
    assert counter.count == 3
    [(site, n)] = counter.sites.items()
    assert n == 3 and "test_bench_gpu_train.py:" in site
