"""Request bodies -> a float32 batch the model accepts, or an ApiError that says what is wrong.

Two ways in, as the predict endpoint documents them:
- multipart form fields named `file` (repeatable), each an encoded image;
- JSON `{"instances": [...]}`, each item `{"b64": "<base64 image>"}` or a nested float array of
  the card's input shape (C, H, W), already preprocessed.

Images are decoded with Pillow from an allow-list of formats, after checking the pixel count in
the header, so a decompression bomb is refused before it is expanded.

JSON is parsed within a memory budget (`load_json`), and tensor values, from JSON here and in
the Open Inference Protocol (JSON or gRPC's typed contents), are checked value by value before
any array is built (`float32_values`): a number (no boolean, string or null), finite and within
FP32's range, or a client error naming the input and the position of the first bad value.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from httpapi.errors import ApiError, shown
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


# -- JSON and tensor values -------------------------------------------------------------------
FP32_MAX = float(np.finfo(np.float32).max)
# JSON integers longer than this are read as floats (inf past float64's range): none of them is
# an FP32 value or a sane shape, and int() refuses those over 4,300 digits (a ValueError mid-parse).
_INT_DIGITS = 40
_NUMBERS = {int, float}  # by exact type: bool is an int subclass, and is refused
# Bodies this small are parsed on the event loop; JSON larger than LARGE_JSON_BYTES is parsed
# under `max_concurrent_json` (parse_off_loop).
INLINE_BYTES, LARGE_JSON_BYTES = 16 * 1024, 2**20
T = TypeVar("T")


def _json_int(text: str) -> int | float:
    return int(text) if len(text) <= _INT_DIGITS else float(text)


def json_values(body: bytes) -> int:
    """An upper bound of the values a JSON text holds, before parsing it: every value but the
    first opens a list, follows a comma or follows a colon (and these characters inside strings
    only raise the count). bytes.count runs at memory speed."""
    return 1 + sum(body.count(c) for c in b"[{,:")


def load_json(body: bytes, max_values: int) -> Any:
    """A JSON body -> Python values, 400 when it is not JSON, 413 when it holds more than
    `max_values` values (`max_json_values`).

    The byte limit alone does not bound what parsing costs: Python's json makes an object per
    value, up to ~100 bytes each once held in a list (a float is 24 bytes and its list slot 8,
    `{}` is 64, `{"":{}}` 250 for two). 16 MiB of `{},` became 5.6 million dicts: a fresh
    server peaked at 550 MB, and at 1.1 to 1.5 GB with four such bodies at once
    (`bench/serving_limits.py --only json-memory`). Counting the values from the bytes first
    (at memory speed) refuses that before a value is made: 2**20 values cost ~100 MB at worst,
    and hold a tensor of 4 MiB, far more than JSON tensors are for (binary data and images carry
    large inputs, at 4 bytes a value instead of ~10 in JSON text). The count is a bound, not the
    exact number: commas and colons inside strings count too, which base64 never holds.
    Integers too long for a float32 parse as floats (`_json_int`), so that no number makes the
    parser or numpy raise.
    """
    values = json_values(body)
    if values > max_values:
        raise ApiError(413, "too_large", f"the JSON body holds up to {values} values (counted from its "
                                         f"commas, colons and brackets); the limit is {max_values}: "
                                         "send large tensors as binary data or images")
    try:
        return json.loads(body, parse_int=_json_int)
    except RecursionError:
        raise ApiError(400, "bad_json", "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from None


async def parse_off_loop(parse: Callable[[], T], *, size: int, json_size: int, slots: asyncio.Semaphore,
                        timeout_s: float) -> T:
    """`parse()` a request body of `size` bytes, `json_size` of them JSON: on the event loop when
    small (cheaper than the hop to a worker thread), else on a worker thread, and for more than
    LARGE_JSON_BYTES of JSON only while holding one of the service's JSON slots
    (`max_concurrent_json`; 503 when none frees within `timeout_s`).

    The slots bound what JSON costs the service together: within `max_json_values`, one body
    under the 16 MiB limit still takes up to ~200 MB while it is parsed (its text decoded at up
    to 4 bytes a character, its strings as much again, ~90 bytes a value), and four at once
    took 810 MB (`bench/serving_limits.py --only json-memory`). Bodies of 1 MiB or less, the
    JSON that clients of this service send, never wait."""
    if size <= INLINE_BYTES:
        return parse()
    if json_size <= LARGE_JSON_BYTES:
        return await run_in_threadpool(parse)
    try:
        await asyncio.wait_for(slots.acquire(), timeout_s)
    except TimeoutError:
        raise ApiError(503, "overloaded", f"no JSON slot free within {timeout_s} s (large JSON bodies are "
                                          "parsed one at a time); retry shortly, or send tensors as binary "
                                          "data", headers={"Retry-After": "1"}) from None
    try:
        return await run_in_threadpool(parse)
    finally:
        slots.release()


def flatten(data: list) -> list:
    """Nested lists -> their leaves in row-major order (without recursion: no depth limit)."""
    out, stack = [], [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def nested_index(data: list, index: int) -> list[int]:
    """Where the `index`-th leaf of `flatten(data)` sits in `data`, as [i, j, ...] (for messages)."""
    stack, seen = [(iter(data), -1)], 0
    while stack:
        items, _ = stack[-1]
        for value in items:
            stack[-1] = (items, stack[-1][1] + 1)
            if isinstance(value, list):
                stack.append((iter(value), -1))
                break
            if seen == index:
                return [i for _, i in stack]
            seen += 1
        else:
            stack.pop()
    return []


def _kind(value: object) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)  # null, true, false: as the client wrote them
    if isinstance(value, str | bytes):
        return f"the string {shown(value, 16)}"
    return "an object" if isinstance(value, dict) else f"a {type(value).__name__}"


def check_numbers(values: list, where: Callable[[int], str], status: int = 400) -> None:
    """Every value is a number by type: a boolean, string or null is refused (numpy would take
    True as 1.0 and "1.5" as 1.5), the error (`status`, `invalid_input`) naming `where(i)` of the
    first. JSON integers are at most 40 digits (`_json_int`), so numpy can hold every number."""
    if not set(map(type, values)) <= _NUMBERS:
        i = next(i for i, v in enumerate(values) if type(v) not in _NUMBERS)
        raise ApiError(status, "invalid_input", f"{where(i)} is {_kind(values[i])}; FP32 values are "
                                                "numbers (not booleans, strings or null)")


def float32_values(values: list, where: Callable[[int], str], status: int = 400) -> np.ndarray:
    """Flat tensor values (from JSON, or gRPC's typed contents) -> a flat float32 array, each
    checked before an array is built (`check_numbers`), then finite and within FP32's range (a
    300-digit integer made numpy raise OverflowError: a 500)."""
    check_numbers(values, where, status)
    return finite_float32(np.array(values, dtype=np.float64), where, status)


def finite_float32(x: np.ndarray, where: Callable[[int], str], status: int = 400) -> np.ndarray:
    """`x` (any float dtype, any shape) as float32 once every value is finite and within FP32's
    range; else the error names `where(flat index)` of the first that is not."""
    bad = ~(np.abs(x) <= FP32_MAX)  # NaN compares False
    if bad.any():
        i = int(np.argmax(bad))
        raise ApiError(status, "invalid_input", f"{where(i)} is {x.flat[i]:.6g}; FP32 values are finite "
                                                f"numbers within ±{FP32_MAX:.8g}")
    return x.astype(np.float32, copy=False)


def check_answer_bytes(size: int, limit: int) -> None:
    """413 when the answer a request asks for would exceed `max_response_bytes`: every front end
    reckons its answer's size from the request before any work, and refuses here."""
    if size > limit:
        raise ApiError(413, "too_large", f"the answer to this request would take up to {size} bytes; "
                                         f"the limit is {limit} (max_response_bytes): ask for fewer rows "
                                         "or outputs, or a smaller classification count")


def parse_json(body: bytes, card: ModelCard, max_images: int, *, max_values: int) -> list[Item]:
    """A JSON predict body -> its instances: (name, encoded image) or a checked (C, H, W) array."""
    raw = load_json(body, max_values)
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
        def where(i: int, item=item, what=what) -> str:
            return what + "".join(f"[{k}]" for k in nested_index(item, i))

        check_numbers(flatten(item), where, status=422)  # before numpy sees them
        try:
            x = np.asarray(item, dtype=np.float64)
        except (ValueError, TypeError):
            raise ApiError(422, "invalid_input", f"{what} is not a rectangular array of numbers; "
                                                 f"expected shape {list(shape)}") from None
        except RecursionError:
            raise ApiError(400, "bad_json", f"{what} is nested too deeply") from None
        if x.shape != shape:
            raise ApiError(422, "invalid_input", f"{what} has shape {list(x.shape)}; this model takes "
                                                 f"{list(shape)} (channels, height, width), preprocessed")
        items.append(finite_float32(x, where, status=422))
    return items
