"""Make the pictures under docs/pictures/ that the README's "Seeing inside the network" shows.

Trains the digits cnn (5 epochs) and the localizer of one digit on a 32 px canvas (3 epochs) in
a temporary folder, takes the pictures their runs log, exports the cnn with its explain outputs
and explains a held-out digit from the ONNX file as the service does, then, where Chromium is
installed, photographs the service's page after a digit was dropped on it. About two minutes
on 2 cores.

    .venv/bin/python scripts/readme_pictures.py [--output docs/pictures]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MAX_SIDE = 900  # pictures wider than this are scaled down for the README


def save(picture: Image.Image | Path, path: Path) -> None:
    image = Image.open(picture) if isinstance(picture, Path) else picture
    image = image.convert("RGB")
    if image.width > MAX_SIDE:
        image = image.resize((MAX_SIDE, round(image.height * MAX_SIDE / image.width)),
                             Image.Resampling.LANCZOS)
    image.save(path, optimize=True)
    print(f"{path} ({image.width}x{image.height}, {path.stat().st_size // 1024} kB)")


def train(tmp: Path, **fields):
    from training.running.local import train as run
    from training.spec import TrainSpec

    return run(TrainSpec(tracking_uri=f"sqlite:///{tmp}/mlflow.db", storage=str(tmp / "runs"),
                         experiment="readme", **fields))


def artifact(result, name: str, tmp: Path) -> Path:
    from mlflow.tracking import MlflowClient

    return Path(MlflowClient(result.tracking_uri).download_artifacts(result.run_id, name, str(tmp)))


def page_picture(models: Path, digit: Path, out: Path, tmp: Path) -> None:
    """`waldo serve` on the exported cnn, its page in headless Chromium with `digit` dropped
    on it and the edges kernel chosen."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    port = 8765
    server = subprocess.Popen([sys.executable, "-m", "waldo", "serve", "--models", str(models),
                               "--port", str(port)], cwd=tmp, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        options = webdriver.ChromeOptions()
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,1900",
                     f"--user-data-dir={tmp / 'profile'}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            for _ in range(100):
                if driver.execute_script("return document.getElementById('model').options.length"):
                    break
                time.sleep(0.1)
            driver.find_element(By.ID, "file").send_keys(str(digit))
            for _ in range(300):
                if driver.execute_script("return document.body.dataset.explain") in ("done", "error"):
                    break
                time.sleep(0.1)
            Select(driver.find_element(By.ID, "kernel-preset")).select_by_value("edges")
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1000, min(height + 40, 2400))
            driver.save_screenshot(str(tmp / "page.png"))
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(30)
    save(tmp / "page.png", out / "page.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "docs" / "pictures"))
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        os.chdir(tmp)
        cnn = train(tmp, model="cnn", data="digits", epochs=5)
        for picture, saved in (("first_layer_filters.png", "filters.png"),
                               ("pictures/feature_maps/test_000.png", "feature_maps.png"),
                               ("pictures/gradcam_correct.png", "gradcam_correct.png"),
                               ("pictures/worst_mistakes.png", "worst_mistakes.png")):
            save(artifact(cnn, picture, tmp), out / saved)
        localizer = train(tmp, task="localize", model="cnn", data="localization-digits", epochs=3,
                          data_args={"canvas_size": 32, "train_size": 1500, "eval_size": 200})
        save(artifact(localizer, "pictures/gradcam_correct.png", tmp), out / "localizer_gradcam.png")

        from training.commands.explain import explain_onnx
        from training.data.digits import digits_as_mnist
        from training.export import export_run
        from training.spec import ExportSpec

        exported = export_run(ExportSpec(run=cnn.run_id, name="digits", output=str(tmp / "models"),
                                         tracking_uri=cnn.tracking_uri))
        images, targets = digits_as_mnist()
        digit = tmp / "digit.png"
        Image.fromarray(images[-3, 0].numpy()).save(digit)
        _, written = explain_onnx(exported.path, exported.card, [str(digit)], tmp / "explained")
        for path in written:
            kind = path.name.split(".")[-2]
            save(path, out / f"onnx_{kind}.png")
        if shutil.which("chromium") or Path("/usr/bin/chromium").exists():
            page_picture(tmp / "models", digit, out, tmp)
        os.chdir(ROOT)


if __name__ == "__main__":
    main()
