"""The pointing game on the session's served localizer (`SERVED_LOCALIZER`: the cnn on 32 px
localization-digits canvases, 3 epochs): its class maps point at the digit far more often than
a random point would, and its run logs the figures."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from support import SERVED_LOCALIZER


def test_the_localizers_class_maps_point_at_the_digit(trained_run):
    """Of the test canvases the localizer gets right (digit present, found, right class), the
    peak of its map for the answer (HiResCAM at the last conv stage, each cell placed where the
    convolutions computed it) lies inside the true box at least twice as often as a peak at a
    random cell of the map would, and by at least 0.2 more.

    Measured with this spec trained on seeds 0 (the fixture's) to 3, 56 or 57 canvases scored
    of 200 each: shares 0.67, 0.84, 0.80 and 0.50 against random-cell baselines of 0.19 to 0.20
    (ratios 3.5, 4.2, 4.0 and 2.5); a map that ignored the image would score the baseline. The
    bar (about 0.40 here) sits 0.27 below the fixture's share, four standard deviations of a
    share over 57 canvases, and 0.10 below the worst seed's. The run's logged `pointing_game`
    and `pointing_game_baseline` are the same figures, from the same images."""
    from training.data import create_datamodule
    from training.tasks import load_task_file
    from training.tracking import explain

    run = trained_run(**SERVED_LOCALIZER)
    dm = create_datamodule(run.logged_spec.data_spec())
    dm.setup("fit")
    x, targets = explain.held_out_sample(dm)
    game = explain.pointing_game_for(load_task_file(run.checkpoint).net, x, targets)
    assert game.method == "HiResCAM" and game.scored >= 30, game
    assert game.share >= 2 * game.baseline and game.share >= game.baseline + 0.2, game.line()
    logged = MlflowClient(run.result.tracking_uri).get_run(run.run_id).data.metrics
    assert logged["pointing_game"] == pytest.approx(game.share, abs=1.5 / game.scored)
    assert logged["pointing_game_baseline"] == pytest.approx(game.baseline, abs=1e-6)
