"""decode_image: same tensor as torchvision's transforms, every mode converted, bad input typed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from app.images import (
    CorruptImageError,
    EmptyImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_image,
    decode_opened,
    normalize,
    open_image,
    stack_pixels,
)
from models import InputSpec

RGB_SPEC = InputSpec(
    channels=3, size=(28, 28), resize=32, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3]
)
GREY_SPEC = InputSpec(channels=1, size=(28, 28), mean=[0.0], std=[1.0])


def encode(im: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


@pytest.mark.parametrize("size", [(64, 48), (48, 64), (32, 32), (20, 30)])
def test_matches_torchvision_resize_centre_crop_normalise(size: tuple[int, int]) -> None:
    im = noise(size)
    ref = T.Compose(
        [T.Resize(32), T.CenterCrop(28), T.ToTensor(), T.Normalize(RGB_SPEC.mean, RGB_SPEC.std)]
    )(im)
    got = decode_image(encode(im), RGB_SPEC, 10**7)
    assert got.shape == (3, 28, 28) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_straight_resize_grey_and_invert() -> None:
    im = noise((56, 40), "L")
    ref = T.Compose([T.Resize((28, 28)), T.ToTensor()])(im)
    torch.testing.assert_close(decode_image(encode(im), GREY_SPEC, 10**7), ref, rtol=0, atol=1e-6)
    inverted = decode_image(encode(im), GREY_SPEC.model_copy(update={"invert": True}), 10**7)
    torch.testing.assert_close(inverted, 1 - ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("im", "fmt", "expect"),
    [
        (Image.new("CMYK", (30, 30), (0, 0, 0, 0)), "JPEG", 1.0),  # no ink: white
        (Image.new("RGBA", (30, 30), (0, 0, 0, 0)), "PNG", 1.0),  # transparent over white
        (Image.new("LA", (30, 30), (0, 255)), "PNG", 0.0),  # opaque black
        (Image.new("P", (30, 30), 0), "GIF", 0.0),  # palette index 0 = black
        (Image.new("1", (30, 30), 1), "PNG", 1.0),
        (Image.fromarray(np.full((30, 30), 65535, np.uint16)), "PNG", 1.0),  # 16-bit white
        (Image.fromarray(np.full((30, 30), 32896, np.uint16)), "TIFF", 128 / 255),  # not clipped
    ],
    ids=["cmyk", "rgba", "la", "palette", "bilevel", "16bit-png", "16bit-tiff"],
)
def test_every_mode_is_converted(im: Image.Image, fmt: str, expect: float) -> None:
    x = decode_image(encode(im, fmt), GREY_SPEC, 10**7)
    assert x.shape == (1, 28, 28)
    assert float(x.mean()) == pytest.approx(expect, abs=0.02)
    assert decode_image(encode(im, fmt), RGB_SPEC, 10**7).shape == (3, 28, 28)


def test_transparency_becomes_the_cards_background() -> None:
    # A white stroke on a transparent canvas, as drawing apps export a digit.
    a = np.zeros((28, 28, 4), np.uint8)
    a[10:18, 12:16] = 255
    blob = encode(Image.fromarray(a, "RGBA"))
    on_white = decode_image(blob, GREY_SPEC, 10**7)
    on_black = decode_image(blob, GREY_SPEC.model_copy(update={"background": 0}), 10**7)
    assert float(on_white.min()) == 1.0  # default: white paper, the stroke vanishes
    assert float(on_black.sum()) == 8 * 4 and float(on_black.max()) == 1.0  # MNIST-like


def test_the_shipped_mnist_card_composites_onto_black() -> None:
    from models.checkpoint import read_card

    assert read_card(Path(__file__).parents[2] / "models" / "vae-mnist").input.background == 0


def test_multi_frame_uses_the_first_frame() -> None:
    frames = [Image.new("L", (28, 28), v) for v in (255, 0, 0)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert float(decode_image(data, GREY_SPEC, 10**7).mean()) == pytest.approx(1.0, abs=0.01)
    tiff = encode(frames[1], "TIFF", save_all=True, append_images=[frames[0]])
    assert float(decode_image(tiff, GREY_SPEC, 10**7).mean()) == pytest.approx(0.0, abs=0.01)


@pytest.mark.parametrize(
    "spec", [RGB_SPEC, GREY_SPEC, GREY_SPEC.model_copy(update={"invert": True})], ids=str
)
def test_a_batch_is_normalised_as_each_image_alone_and_stays_channels_last(
    spec: InputSpec,
) -> None:
    mode = "RGB" if spec.channels == 3 else "L"
    blobs = [encode(noise((40 + 3 * i, 36), mode, seed=i)) for i in range(5)]
    pixels = [decode_opened(open_image(b, 10**7), spec) for b in blobs]
    batch = normalize(stack_pixels(pixels), spec)
    assert batch.shape == (5, spec.channels, 28, 28) and batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last)  # no copy before the model
    alone = torch.stack([decode_image(b, spec, 10**7) for b in blobs])
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-6)
    # Any layout in, the same numbers out, in that layout.
    nchw = normalize(torch.stack(pixels), spec)
    assert nchw.is_contiguous()
    torch.testing.assert_close(nchw, alone, rtol=0, atol=1e-6)


def test_large_jpeg_is_decoded_in_draft_mode_and_still_matches() -> None:
    im = Image.new("RGB", (2048, 1536), (120, 60, 200))
    data = encode(im, "JPEG", quality=95)
    got = decode_image(data, RGB_SPEC, 10**7)
    full = T.Compose(
        [T.Resize(32), T.CenterCrop(28), T.ToTensor(), T.Normalize(RGB_SPEC.mean, RGB_SPEC.std)]
    )(Image.open(io.BytesIO(data)).convert("RGB"))
    torch.testing.assert_close(got, full, rtol=0, atol=0.05)  # JPEG DCT scaling, same picture
    opened = Image.open(io.BytesIO(data))
    opened.draft("RGB", (43, 33))
    assert opened.size[0] < 2048  # libjpeg really scales down for this target


def test_bomb_is_refused_before_decoding() -> None:
    data = encode(Image.new("1", (8000, 8000)), "PNG")  # 64 Mpx in a few kB
    with pytest.raises(ImageTooLargeError, match="limit"):
        decode_image(data, GREY_SPEC, 40_000_000)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", EmptyImageError),
        (b"GIF89a-not-really", UnsupportedImageError),  # Pillow cannot identify it
        (b"<html>hello</html>", UnsupportedImageError),
        (encode(noise((200, 200)), "JPEG")[:3000], CorruptImageError),
        (encode(noise((200, 200)), "PNG")[:5000], CorruptImageError),
        (encode(Image.new("RGB", (8, 8)), "PPM"), UnsupportedImageError),  # valid, not allowed
    ],
    ids=["empty", "fake-gif", "html", "truncated-jpeg", "truncated-png", "ppm"],
)
def test_bad_input_raises_typed_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_image(data, RGB_SPEC, 10**7)
