"""Request bodies -> a float32 batch the model accepts, or an ApiError that says what is wrong.

Two ways in, as the predict endpoint documents them:
- multipart form fields named `file` (repeatable), each an encoded image;
- JSON `{"instances": [...]}`, each item `{"b64": "<base64 image>"}` or a nested float array of
  the card's input shape (C, H, W), already preprocessed.

Images are decoded with Pillow from an allow-list of formats, after checking the pixel count in
the header, so a decompression bomb is refused before it is expanded.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Annotated, Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import ApiError
from serving.modelcard import ModelCard
from serving.processing import preprocess

IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")


class B64Image(BaseModel):
    model_config = ConfigDict(extra="forbid")
    b64: str = Field(description="a base64-encoded PNG, JPEG, BMP, GIF, WebP or TIFF image")


Instance = B64Image | list[Any]


class PredictRequest(BaseModel):
    """JSON body of predict: images as base64, or tensors of the model's input shape."""

    model_config = ConfigDict(extra="forbid")
    instances: Annotated[list[Instance], Field(min_length=1)]


# One input of a request: an encoded image with a name for messages, or preprocessed float32
# rows, (C, H, W) for one or (n, C, H, W) for n.
Item = tuple[str, bytes] | np.ndarray


class PixelBudget:
    """Decoded pixels one request may cost (`max_request_pixels`), charged image by image."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def charge(self, pixels: int, what: str) -> None:
        self.used += pixels
        if self.used > self.limit:
            raise ApiError(413, "too_large", f"decoding {what} brings this request to {self.used} pixels; "
                                             f"the per-request budget is {self.limit} decoded pixels "
                                             "(send fewer or smaller images)")


def open_image(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """Bytes -> an opened, not yet decoded, Pillow image; 400 for anything undecodable, 413 for
    too many pixels, both read from the header before a pixel is decoded."""
    if not data:
        raise ApiError(400, "bad_image", f"{what} is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise ApiError(400, "bad_image", f"{what} is not an image in a known format "
                                         f"({', '.join(IMAGE_FORMATS)})") from None
    except Image.DecompressionBombError:
        raise ApiError(413, "too_large", f"{what} declares too many pixels") from None
    except Exception as exc:  # a broken header: Pillow raises OSError, SyntaxError, ValueError...
        raise ApiError(400, "bad_image", f"{what} cannot be decoded: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:  # checked from the header, before decoding
        raise ApiError(413, "too_large", f"{what} is {width}x{height} = {width * height} pixels; "
                                         f"the limit is {max_pixels}")
    if width < 1 or height < 1:
        raise ApiError(400, "bad_image", f"{what} has size {width}x{height}")
    return image


def load_image(image: Image.Image, what: str) -> Image.Image:
    """Decode an opened image's pixels; 400 for truncated or corrupt data."""
    try:
        image.load()
    except Exception as exc:  # truncated data, corrupt chunks, bombs that lied in the header
        raise ApiError(400, "bad_image", f"{what} cannot be decoded: {exc}") from None
    return image


def decode_image(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """Bytes -> a decoded Pillow image at full size (for callers that want the image itself)."""
    return load_image(open_image(data, what, max_pixels), what)


class Inputs:
    """A request's inputs in order: encoded images, decoded and preprocessed one at a time, and
    tensors already preprocessed.

    Building one opens every image (headers only) and charges the request's budget of decoded
    pixels, so a request over it is refused before anything is decoded. JPEGs decode at the
    smallest 1/2, 1/4 or 1/8 scale that still covers the model's input (Pillow's draft mode), so
    a phone photo bound for a small network never exists at full size. `decode()` then decodes,
    resizes and normalizes each image and lets it go before the next: the peak is one image at
    decode size, never the whole request at full size.
    """

    def __init__(self, card: ModelCard, items: list[Item], *, max_pixels: int, max_request_pixels: int):
        spec = card.input
        self.card = card
        budget = PixelBudget(max_request_pixels)
        self._items: list[tuple[str, Image.Image] | np.ndarray | None] = []
        self.sizes: list[tuple[int, int]] = []  # as sent: boxes come back in these pixels
        for item in items:
            if isinstance(item, np.ndarray):
                rows = item if item.ndim == 4 else item[None]
                self._items.append(rows)
                self.sizes.extend([(spec.width, spec.height)] * len(rows))
                continue
            name, blob = item
            image = open_image(blob, name, max_pixels)
            self.sizes.append(image.size)
            if image.format == "JPEG":
                image.draft(image.mode if image.mode in ("L", "RGB") else None, (spec.width, spec.height))
            budget.charge(image.size[0] * image.size[1], name)
            self._items.append((name, image))
        self.pixels = budget.used  # what decode() will decode

    @property
    def count(self) -> int:
        """Images and tensor rows: the batch rows this request becomes."""
        return len(self.sizes)

    def decode(self) -> np.ndarray:
        """(n, C, H, W) float32, as the card says."""
        if len(self._items) == 1 and isinstance(self._items[0], np.ndarray):
            return self._items.pop()  # one preprocessed batch: no copy
        rows = []
        for i, item in enumerate(self._items):
            self._items[i] = None  # nothing keeps a decoded image past its turn
            if isinstance(item, np.ndarray):
                rows.append(item)
                continue
            name, image = item
            with image:
                rows.append(preprocess(self.card, load_image(image, name))[None])
        return np.concatenate(rows)


def parse_json(body: bytes, card: ModelCard, max_images: int) -> list[Item]:
    """A JSON predict body -> its instances: (name, encoded image) or a checked (C, H, W) array."""
    try:
        raw = json.loads(body)
    except RecursionError:
        raise ApiError(400, "bad_json", "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from None
    count = len(raw["instances"]) if isinstance(raw, dict) and isinstance(raw.get("instances"), list) else 0
    if count > max_images:
        raise ApiError(413, "too_many", f"{count} instances; the limit is {max_images}")
    try:
        request = PredictRequest.model_validate(raw)
    except RecursionError:
        raise ApiError(400, "bad_json", "JSON nested too deeply") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                             for e in exc.errors()[:3])
        raise ApiError(422, "invalid_input", f'expected {{"instances": [{{"b64": ...}} or a '
                                              f"float array]}}: {problems}") from None
    spec = card.input
    shape = (spec.channels, spec.height, spec.width)
    items: list[Item] = []
    for i, item in enumerate(request.instances):
        what = f"instances[{i}]"
        if isinstance(item, B64Image):
            try:
                items.append((what, base64.b64decode(item.b64, validate=True)))
            except (binascii.Error, ValueError):
                raise ApiError(400, "bad_image", f"{what}.b64 is not valid base64") from None
            continue
        try:
            x = np.asarray(item, dtype=np.float32)
        except (ValueError, TypeError):
            raise ApiError(422, "invalid_input", f"{what} is not a rectangular array of numbers; "
                                                 f"expected shape {list(shape)}") from None
        except RecursionError:
            raise ApiError(400, "bad_json", f"{what} is nested too deeply") from None
        if x.shape != shape:
            raise ApiError(422, "invalid_input", f"{what} has shape {list(x.shape)}; this model takes "
                                                 f"{list(shape)} (channels, height, width), preprocessed")
        if not np.isfinite(x).all():
            raise ApiError(422, "invalid_input", f"{what} contains NaN or infinity")
        items.append(x)
    return items
