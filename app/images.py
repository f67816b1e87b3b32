"""Safe image decoding: uploaded bytes -> the (C, H, W) float tensor a model card asks for.

Shared by the service, the benchmark's LitServe contender and its in-process ceiling, so all
three preprocess alike. Every fault of the input raises an `ImageError` subclass (never a bare
Pillow or numpy exception), so the service can answer 4xx instead of 500.

Order of work, each step chosen so a hostile upload costs little:
1. open lazily (reads the header only) among a fixed list of formats;
2. refuse a declared size over `max_pixels` before any pixel is decoded (decompression bombs);
3. JPEG only: `draft()` lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the target is that
   much smaller, which is most of the cost of a big photo;
4. first frame of animated GIF/WebP/multi-page TIFF;
5. mode conversion (CMYK, 16-bit, palette, alpha over the card's background), resize, crop, to uint8 (C, H, W);
6. stack (`stack_pixels`) and normalise (`normalize`): the service does it once per batch on
   the inference thread (and the device), `decode_image` per image for callers that want one
   float tensor.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from models.checkpoint import InputSpec

# Pillow formats we accept; anything else is refused before a decoder plugin runs on it.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


class ImageError(ValueError):
    """The upload cannot be turned into a model input; the message says why."""


class EmptyImageError(ImageError):
    """Zero bytes were uploaded."""


class UnsupportedImageError(ImageError):
    """Not an image in one of `FORMATS`."""


class CorruptImageError(ImageError):
    """A supported format whose data is truncated or damaged."""


class ImageTooLargeError(ImageError):
    """The declared size exceeds the pixel limit (decompression-bomb guard)."""


def register_formats() -> None:
    """Import Pillow's format plugins now: the first `Image.open` naming a format not yet
    registered imports them all (~40 ms here), which would otherwise fall on the first upload."""
    Image.init()


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open `data` lazily (the header only), check format and declared size."""
    if not data:
        raise EmptyImageError("empty image file")
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedImageError(
            f"not a supported image; send one of {', '.join(FORMATS)}"
        ) from None
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"image too large: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"cannot read image header: {e}") from None
    width, height = im.size
    if width < 1 or height < 1:
        raise CorruptImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    return im


def _draft_size(im: Image.Image, spec: InputSpec) -> tuple[int, int]:
    """Smallest (w, h) the resize step needs, so `draft()` never decodes below it."""
    out_h, out_w = spec.size
    if spec.resize is None:
        return out_w, out_h
    w, h = im.size
    scale = spec.resize / min(w, h)
    return max(out_w, int(w * scale) + 1), max(out_h, int(h * scale) + 1)


def _to_mode(im: Image.Image, channels: int, background: int) -> Image.Image:
    """Convert any Pillow mode to 'L' (channels 1) or 'RGB' (channels 3); transparent areas
    become grey level `background` (the card's: what "nothing" looks like to the model)."""
    target = "L" if channels == 1 else "RGB"
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16/32-bit grey: Pillow's convert('L') clips at 255 instead of scaling, so scale here.
        a = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(a * (255.0 / peak), 0, 255).round().astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0)
        im = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (background,) * 3 + (255,))
        im = Image.alpha_composite(bg, rgba)
    return im if im.mode == target else im.convert(target)


def _resize_crop(im: Image.Image, spec: InputSpec) -> Image.Image:
    """Resize as the spec says; torchvision's Resize/CenterCrop arithmetic, bilinear.

    (Resizing only the crop's source box, Pillow's `box`, would skip the border the crop
    throws away, but its filter coefficients round differently: about 0.1% of pixels one level
    off torchvision's. Pixel parity with the training transforms is kept instead.)
    """
    out_h, out_w = spec.size
    w, h = im.size
    if spec.resize is None:
        if (w, h) != (out_w, out_h):
            im = im.resize((out_w, out_h), Image.Resampling.BILINEAR)
        return im
    short, long_ = (w, h) if w <= h else (h, w)
    new_short, new_long = spec.resize, int(spec.resize * long_ / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = round((new_h - out_h) / 2.0)
    left = round((new_w - out_w) / 2.0)
    if (left, top, out_w, out_h) != (0, 0, new_w, new_h):
        im = im.crop((left, top, left + out_w, top + out_h))  # pads with black if too small
    return im


def to_uint8_tensor(im: Image.Image) -> torch.Tensor:
    """A decoded 'L'/'RGB' image -> its (C, H, W) uint8 pixels (one copy, out of Pillow)."""
    a = np.asarray(im, dtype=np.uint8)  # (H, W) or (H, W, 3)
    x = torch.from_numpy(a.copy() if not a.flags.writeable else a)
    return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)  # (C, H, W), a view


def stack_pixels(items: Sequence[torch.Tensor]) -> torch.Tensor:
    """(C, H, W) uint8 images of one size -> a (B, C, H, W) batch, channels-last in memory.

    `to_uint8_tensor` returns views of Pillow's pixels, which are (H, W, C) in memory: stacking
    them in that order is one straight copy per image, where stacking as (C, H, W) transposes
    each. `normalize` keeps that order, so a channels-last model gets its batch with no
    further copy; with one channel the two orders are the same. The contiguous buffer is
    `x.movedim(1, -1)`.
    """
    return torch.stack([t.movedim(0, -1) for t in items]).movedim(-1, 1)


def normalize(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 pixels (..., C, H, W) -> float32 in the model's input space: /255, inverted if the
    spec says so, minus mean, over std, folded into one multiply and one add per element.

    Runs in (..., H, W, C) order, Pillow's, so the per-channel constants broadcast along the
    innermost dimension; the result keeps `x`'s memory layout (channels-last from
    `stack_pixels`). Run on a whole batch: three tensor ops per batch, not per image.
    """
    mean = torch.tensor(spec.mean, dtype=torch.float64)
    std = torch.tensor(spec.std, dtype=torch.float64)
    # ((x / 255 inverted?) - mean) / std == x * scale + bias
    scale, bias = 1.0 / (255.0 * std), -mean / std
    if spec.invert:  # 1 - x / 255
        scale, bias = -scale, (1.0 - mean) / std
    y = x.movedim(-3, -1).to(torch.float32)
    y.mul_(scale.to(y.device, torch.float32)).add_(bias.to(y.device, torch.float32))
    return y.movedim(-1, -3)


def decode_opened(im: Image.Image, spec: InputSpec) -> torch.Tensor:
    """An image from `open_image` -> the (C, H, W) uint8 pixels `spec` describes (mode, size,
    crop), not yet normalised. JPEGs decode at reduced size where the spec allows (draft).

    Raises `ImageError` (a subclass per fault) for data that does not decode.
    """
    try:
        # Animated or multi-page: the first frame is the image. Here, not in open_image:
        # counting frames can read the whole file, which the route must not do on the event loop.
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
        if im.format == "JPEG":
            im.draft("L" if spec.channels == 1 else "RGB", _draft_size(im, spec))
        im.load()
        im = _resize_crop(_to_mode(im, spec.channels, spec.background), spec)
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"image too large: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated and damaged data as OSError/SyntaxError/ValueError.
        raise CorruptImageError(f"corrupt or truncated image: {e}") from None
    return to_uint8_tensor(im)


def decode_image(data: bytes, spec: InputSpec, max_pixels: int) -> torch.Tensor:
    """Decode an uploaded image into the normalised (C, H, W) float32 tensor `spec` describes.

    Raises `ImageError` (a subclass per fault) for anything that is not a usable image.
    """
    return normalize(decode_opened(open_image(data, max_pixels), spec), spec).contiguous()


def decode_mask(im: Image.Image, spec: InputSpec) -> torch.Tensor:
    """An opened mask image (white = missing) -> (H, W) bool at the size `spec` asks for.

    Decoded as the image is (same resize, so a mask drawn on the upload covers the same pixels
    of the model input) but always grey, transparent areas black (observed), never inverted:
    grey levels of 128 and up are missing.
    """
    grey = decode_opened(im, spec.model_copy(update={"channels": 1, "background": 0}))
    return grey[0] >= 128
