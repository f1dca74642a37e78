"""serving.processing: pre-processing equals training's batch transform, post-processing by
hand. (That serving stays free of torch is in test_import_rules.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from serving.modelcard import CLASSIFY_OUTPUTS, LOCALIZE_OUTPUTS, InputSpec, ModelCard
from serving.processing import postprocess, preprocess
from training.data.base import ImageDataModule
from training.data.localization import LocalizationDigitsDataModule


def card(task: str = "classify", labels=("a", "b", "c", "d"), channels: int = 1, size: int = 28,
         mean=(0.1,), std=(0.3,)) -> ModelCard:
    return ModelCard(
        name="t", task=task, labels=list(labels),
        input=InputSpec(channels=channels, height=size, width=size, mean=list(mean), std=list(std)),
        outputs=CLASSIFY_OUTPUTS if task == "classify" else LOCALIZE_OUTPUTS,
    )


def to_pil(pixels: np.ndarray) -> Image.Image:
    """uint8 (C, H, W) -> a Pillow image (L or RGB)."""
    return Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0))


# --- preprocess -----------------------------------------------------------------------------
def test_preprocess_matches_the_training_batch_transform_on_a_canvas():
    dm = LocalizationDigitsDataModule(train_size=32, eval_size=8, canvas_size=48)
    dm.setup("fit")
    c = card("localize", labels=dm.labels, size=48, mean=dm.mean, std=dm.std)
    for i in range(4):
        canvas, _ = dm.val_set[i]
        expected = dm.batch_transform()(canvas[None])[0].numpy()
        got = preprocess(c, to_pil(canvas.numpy()))
        assert got.dtype == np.float32 and got.shape == (1, 48, 48)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_preprocess_matches_the_training_batch_transform_rgb():
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32), dtype=np.uint8)
    dm = ImageDataModule(image_size=32)
    dm.mean, dm.std = (0.2, 0.4, 0.6), (0.25, 0.5, 0.125)
    expected = dm.batch_transform()(torch.from_numpy(pixels)[None])[0].numpy()
    got = preprocess(card(channels=3, size=32, mean=dm.mean, std=dm.std), to_pil(pixels))
    assert got.dtype == np.float32 and got.shape == (3, 32, 32)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_preprocess_by_hand():
    # one pixel of 51 (= 0.2 after scaling), mean 0.1, std 0.5 -> (0.2 - 0.1) / 0.5 = 0.2
    pixels = np.zeros((2, 2), dtype=np.uint8)
    pixels[0, 1] = 51
    got = preprocess(card(size=2, mean=(0.1,), std=(0.5,)), Image.fromarray(pixels))
    np.testing.assert_allclose(got, [[[-0.2, 0.2], [-0.2, -0.2]]], atol=1e-6)


def test_preprocess_converts_mode_and_resizes_like_the_folder_data():
    """An RGB image of another size for a 1-channel card: grey, resized to the card's size.
    The folder data sets resize with torchvision; Pillow's bilinear agrees within a level."""
    rgb = np.random.default_rng(1).integers(0, 256, size=(3, 50, 70), dtype=np.uint8)
    got = preprocess(card(channels=3, size=28, mean=(0, 0, 0), std=(1, 1, 1)), to_pil(rgb))
    assert got.shape == (3, 28, 28) and got.dtype == np.float32
    resized = v2.Resize((28, 28), antialias=True)(torch.from_numpy(rgb)).numpy() / 255
    assert np.abs(got - resized).max() <= 1 / 255 + 1e-6
    grey = preprocess(card(channels=1, size=28, mean=(0,), std=(1,)), to_pil(rgb))
    assert grey.shape == (1, 28, 28)


# --- postprocess: classify ------------------------------------------------------------------
def test_postprocess_classify_is_softmax_top_k_in_order():
    # logits log(1), log(2), log(3), log(4) -> probabilities .1, .2, .3, .4
    logits = np.log(np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]], dtype=np.float32))
    out = postprocess(card(), logits, [(28, 28), (28, 28)], top_k=3)
    assert len(out) == 2
    assert out[0]["label"] == "d" and out[0]["probability"] == pytest.approx(0.4, abs=1e-6)
    assert [p["label"] for p in out[0]["top_k"]] == ["d", "c", "b"]
    assert [p["probability"] for p in out[0]["top_k"]] == pytest.approx([0.4, 0.3, 0.2], abs=1e-6)
    assert [p["label"] for p in out[1]["top_k"]] == ["a", "b", "c"]
    # shifting the logits changes nothing; more than K asked for gives K
    out = postprocess(card(), logits + 100, [(1, 1), (1, 1)], top_k=10)
    probabilities = [p["probability"] for p in out[0]["top_k"]]
    assert probabilities == pytest.approx([0.4, 0.3, 0.2, 0.1], abs=1e-6)


def test_postprocess_needs_one_size_per_output():
    with pytest.raises(ValueError):
        postprocess(card(), np.zeros((2, 4), dtype=np.float32), [(28, 28)])


# --- postprocess: localize ------------------------------------------------------------------
def test_postprocess_localize_box_in_pixels_of_the_original_image():
    c = card("localize", labels=("cat", "dog", "eel"))
    y = np.array([
        [0.9, 0.25, 0.5, 0.5, 0.25, 0.1, 0.7, 0.2],
        [0.2, 0.1, 0.1, 0.3, 0.6, 0.5, 0.2, 0.3],
        [0.5, -0.2, 1.4, 0.4, 0.5, 0.1, 0.1, 0.8],  # a box beyond the edges is clipped to [0, 1]
    ], dtype=np.float32)
    out = postprocess(c, y, [(200, 100), (50, 40), (10, 20)])
    # 200 x 100 image: x .25 * 200 = 50, y .5 * 100 = 50, w .5 * 200 = 100, h .25 * 100 = 25
    assert out[0]["box"] == pytest.approx({"x": 50, "y": 50, "w": 100, "h": 25}, abs=1e-4)
    assert out[0]["object"] is True and out[0]["p_c"] == pytest.approx(0.9)
    assert out[0]["label"] == "dog" and out[0]["probability"] == pytest.approx(0.7)
    # 50 x 40: x 5, y 4, w 15, h 24; p_c .2 is under the default threshold .5
    assert out[1]["box"] == pytest.approx({"x": 5, "y": 4, "w": 15, "h": 24}, abs=1e-4)
    assert out[1]["object"] is False and out[1]["label"] == "cat"
    # 10 x 20: x clip(-.2) = 0, y clip(1.4) = 1 -> 20, w 4, h 10; p_c .5 reaches .5
    assert out[2]["box"] == pytest.approx({"x": 0, "y": 20, "w": 4, "h": 10}, abs=1e-4)
    assert out[2]["object"] is True and out[2]["label"] == "eel"


def test_postprocess_localize_threshold():
    c = card("localize", labels=("cat", "dog"))
    y = np.array([[0.4, 0.1, 0.1, 0.2, 0.2, 0.6, 0.4]], dtype=np.float32)
    assert postprocess(c, y, [(10, 10)])[0]["object"] is False
    assert postprocess(c, y, [(10, 10)], threshold=0.3)[0]["object"] is True
    assert postprocess(c, y, [(10, 10)], threshold=0.41)[0]["object"] is False


def test_softmax_helper_is_numerically_safe():
    from serving.processing import softmax

    p = softmax(np.array([1000.0, 1000.0 + math.log(3)]))
    assert p.tolist() == pytest.approx([0.25, 0.75])


# --- request inputs: one image at a time, JPEG at reduced scale, the pixel budget --------------
def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    import io

    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def test_a_large_jpeg_decodes_at_reduced_scale_and_keeps_its_size_for_boxes():
    from serving.inputs import Inputs

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (15, 20, 3), dtype=np.uint8))
    photo = small.resize((2000, 1500), Image.Resampling.BILINEAR)
    c = card(channels=3, size=28, mean=(0, 0, 0), std=(1, 1, 1))
    inputs = Inputs(c, [("photo", encoded(photo, "JPEG", quality=95))], max_pixels=4096 * 4096,
                    max_request_pixels=10**9)
    assert inputs.pixels == 250 * 188  # 1/8 scale: what the decoder will produce, not 3 Mpx
    assert inputs.sizes == [(2000, 1500)]
    x = inputs.decode()
    full = preprocess(c, photo)
    assert x.shape == (1, 3, 28, 28)
    assert np.abs(x[0] - full).mean() < 0.02  # the same picture as a full-size decode


def test_the_pixel_budget_counts_the_whole_request_and_names_the_image_that_broke_it():
    from httpapi.errors import ApiError
    from serving.inputs import Inputs

    blob = encoded(Image.new("RGB", (100, 100)), "PNG")
    c = card(channels=3, mean=(0, 0, 0), std=(1, 1, 1))
    assert Inputs(c, [("a", blob), ("b", blob)], max_pixels=10**6, max_request_pixels=20_000).pixels == 20_000
    with pytest.raises(ApiError) as refused:
        Inputs(c, [("a", blob), ("b", blob), ("c", blob)], max_pixels=10**6, max_request_pixels=20_000)
    assert refused.value.status == 413
    assert "decoding c brings this request to 30000 pixels" in refused.value.message
    assert "budget is 20000 decoded pixels" in refused.value.message


def test_16_bit_grey_is_scaled_as_training_reads_it():
    from training.data.images import to_mode

    wide = Image.fromarray(np.array([[0, 256, 32768, 65535]], dtype=np.uint16))
    assert wide.mode.startswith("I;16")
    c = card(channels=1, size=4, mean=(0,), std=(1,))
    got = preprocess(c, wide.resize((4, 4)))[0]
    expected = np.asarray(to_mode(wide.resize((4, 4)), "L"), dtype=np.float32) / 255
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got.max() == 1.0 and 0 < got[0, 1] < 0.01  # 256 is nearly black, not clipped to white
