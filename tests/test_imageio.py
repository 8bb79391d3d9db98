"""imageio.decode_image: orientation, colour modes, animations, broken files, bombs, EXIF, drafts."""

from __future__ import annotations

import io
import struct
import zlib
from datetime import datetime

import numpy as np
import pytest
from PIL import Image, ImageOps, TiffImagePlugin

from conftest import load_sample
from imgrag.retrieval.imageio import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_EXTENSIONS,
    DecodedImage,
    ImageDecodeError,
    content_hash,
    decode_image,
    is_supported,
)

R = TiffImagePlugin.IFDRational


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def pixel(d: DecodedImage, xy) -> tuple[int, int, int]:
    return d.image.getpixel(xy)


def close(rgb, expected, tol=6) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(rgb, expected))


def marker_image(w=60, h=40) -> Image.Image:
    """Red everywhere, a blue block in the top-left corner: orientation is visible."""
    img = Image.new("RGB", (w, h), (220, 20, 20))
    img.paste((20, 20, 220), (0, 0, w // 3, h // 3))
    return img


def exif_bytes(orientation=None, date=None, gps=None) -> bytes:
    ex = Image.Exif()
    if orientation is not None:
        ex[0x0112] = orientation
    if date is not None:
        ex.get_ifd(0x8769)[0x9003] = date
    if gps is not None:
        g = ex.get_ifd(0x8825)
        for k, v in gps.items():
            g[k] = v
    return ex.tobytes()


def png_with_declared_size(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w×h (the pixel data is a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


def with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """Insert an APP1 segment right after SOI."""
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


# ------------------------------------------------------------------------------------------------
# basics
# ------------------------------------------------------------------------------------------------


def test_supported_extensions_and_hash():
    for ext in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"):
        assert ext in SUPPORTED_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in SUPPORTED_EXTENSIONS)
    try:
        import pillow_heif  # noqa: F401

        assert ".heic" in SUPPORTED_EXTENSIONS
    except ImportError:
        assert ".heic" not in SUPPORTED_EXTENSIONS
    assert is_supported("/a/B.JPG") and not is_supported("/a/notes.txt") and not is_supported("noext")
    h = content_hash(b"abc")
    assert len(h) == 32 and int(h, 16) >= 0
    assert h == content_hash(b"abc") != content_hash(b"abd")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_common_formats_decode_to_rgb(fmt):
    data = encode(marker_image(), fmt)
    d = decode_image(data)
    assert d.image.mode == "RGB" and (d.width, d.height) == (60, 40) == d.image.size
    assert d.format == fmt
    assert close(pixel(d, (55, 35)), (220, 20, 20), tol=40) and close(pixel(d, (2, 2)), (20, 20, 220), tol=40)
    assert d.taken_at is None and d.gps_lat is None and d.gps_lon is None


def test_tiny_and_extreme_aspect_images_decode():
    d = decode_image(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    assert (d.width, d.height) == (1, 1) and pixel(d, (0, 0)) == (1, 2, 3)
    d = decode_image(encode(Image.new("RGB", (20000, 10), (9, 9, 9)), "PNG"))
    assert (d.width, d.height) == (20000, 10)


# ------------------------------------------------------------------------------------------------
# orientation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_exif_transpose(orientation):
    data = encode(marker_image(), "JPEG", quality=95, exif=exif_bytes(orientation=orientation))
    d = decode_image(data)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert d.image.size == expected.size == (d.width, d.height)
    assert np.abs(np.asarray(d.image, np.int16) - np.asarray(expected, np.int16)).max() <= 1


def test_rotated_jpeg_comes_out_upright_with_swapped_size():
    # orientation 6: the camera stored the picture rotated; viewers rotate it 90° clockwise
    data = encode(marker_image(60, 40), "JPEG", quality=95, exif=exif_bytes(orientation=6))
    d = decode_image(data)
    assert (d.width, d.height) == (40, 60) == d.image.size
    # the stored top-left blue block ends up top-right after a clockwise turn
    assert close(pixel(d, (37, 2)), (20, 20, 220), tol=40)
    assert close(pixel(d, (2, 2)), (220, 20, 20), tol=40)


# ------------------------------------------------------------------------------------------------
# colour modes
# ------------------------------------------------------------------------------------------------


def test_cmyk_jpeg():
    img = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    d = decode_image(encode(img, "JPEG", quality=95))
    assert d.image.mode == "RGB" and close(pixel(d, (16, 16)), (255, 0, 0), tol=10)


def test_16bit_png_is_scaled_not_clipped():
    arr = np.zeros((8, 8), np.uint16)
    arr[:, :4] = 32768  # half intensity
    arr[:, 4:] = 65535
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    d = decode_image(encode(img, "PNG"))
    assert d.image.mode == "RGB"
    assert close(pixel(d, (1, 1)), (128, 128, 128), tol=1) and pixel(d, (6, 6)) == (255, 255, 255)


def test_32bit_int_and_float_tiff():
    i32 = Image.fromarray((np.arange(64, dtype=np.int32).reshape(8, 8) * 1000))  # 0..63000, 16-bit range
    d = decode_image(encode(i32, "TIFF"))
    assert d.image.mode == "RGB" and pixel(d, (7, 7))[0] == round(63000 * 255 / 65535)
    f = Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
    d = decode_image(encode(f, "TIFF"))
    assert pixel(d, (0, 0)) == (0, 0, 0) and pixel(d, (7, 7)) == (255, 255, 255)


def test_palette_with_transparency_goes_on_white():
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    img.paste(1, (5, 0, 10, 10))  # right half green, left half index 0 = transparent
    for fmt in ("PNG", "GIF"):
        d = decode_image(encode(img, fmt, transparency=0))
        assert pixel(d, (1, 5)) == (255, 255, 255), fmt
        assert close(pixel(d, (8, 5)), (0, 200, 0), tol=2), fmt


def test_rgba_and_la_alpha_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((3, 3), (255, 0, 0, 255))
    rgba.putpixel((2, 2), (0, 0, 0, 128))
    d = decode_image(encode(rgba, "PNG"))
    assert pixel(d, (0, 0)) == (255, 255, 255) and pixel(d, (3, 3)) == (255, 0, 0)
    assert close(pixel(d, (2, 2)), (127, 127, 127), tol=2)
    la = Image.new("LA", (4, 4), (0, 0))
    la.putpixel((1, 1), (50, 255))
    d = decode_image(encode(la, "PNG"))
    assert pixel(d, (0, 0)) == (255, 255, 255) and pixel(d, (1, 1)) == (50, 50, 50)


def test_greyscale_and_bilevel():
    d = decode_image(encode(Image.new("L", (4, 4), 77), "JPEG"))
    assert close(pixel(d, (1, 1)), (77, 77, 77), tol=2)
    d = decode_image(encode(Image.new("1", (4, 4), 1), "PNG"))
    assert pixel(d, (1, 1)) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_first_frame(fmt):
    frames = [Image.new("RGB", (16, 16), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0,
                  **({"lossless": True} if fmt == "WEBP" else {}))
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    d = decode_image(data)
    assert close(pixel(d, (8, 8)), (250, 0, 0), tol=8)


# ------------------------------------------------------------------------------------------------
# broken files
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,reason", [("JPEG", "truncated JPEG"), ("PNG", "truncated PNG")])
def test_truncated_files_fail_with_reason(fmt, reason):
    img = load_sample("chelsea")
    data = encode(img, fmt)
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(data[: len(data) // 2])
    assert str(ei.value) == reason == ei.value.reason
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("data,reason", [
    (b"", "zero-byte file"),
    (b"hello, this is a plain text file\n" * 10, "not an image (text file)"),
    ("Grüße aus Köln\n".encode() * 5, "not an image (text file)"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "not an image (PDF document)"),
    (bytes(range(256)) * 4, "not an image (unrecognised format)"),
])
def test_non_images(data, reason):
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(data)
    assert str(ei.value) == reason


def test_bomb_refused_from_header_before_decoding(monkeypatch):
    from PIL import ImageFile

    def no_decode(self, *a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("decoded a refused image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    data = png_with_declared_size(12000, 12000)
    assert len(data) < 200
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(data, max_pixels=100_000_000)
    assert str(ei.value) == "image too large: 12000x12000 (144 MP > 100 MP limit)"
    # beyond Pillow's own hard limit Pillow refuses inside Image.open; same kind of reason
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(png_with_declared_size(30000, 30000))
    assert str(ei.value).startswith("image too large: 900 MP >")
    assert DEFAULT_MAX_PIXELS >= 108_000_000  # 108 MP phone photos are fine


# ------------------------------------------------------------------------------------------------
# EXIF metadata
# ------------------------------------------------------------------------------------------------


def test_exif_date_and_gps():
    ex = exif_bytes(date="2021:07:04 12:34:56", gps={
        1: "S", 2: (R(33, 1), R(51, 1), R(5400, 100)), 3: "W", 4: (R(151, 1), R(12, 1), R(3, 10)),
    })
    for fmt in ("JPEG", "PNG", "WEBP"):
        d = decode_image(encode(marker_image(), fmt, exif=ex))
        assert d.taken_at == datetime(2021, 7, 4, 12, 34, 56), fmt
        assert d.gps_lat == pytest.approx(-(33 + 51 / 60 + 54 / 3600), abs=1e-6)
        assert d.gps_lon == pytest.approx(-(151 + 12 / 60 + 0.3 / 3600), abs=1e-6)


@pytest.mark.parametrize("date", ["0000:00:00 00:00:00", "    :  :     :  :  ", "2021:13:45 99:00:00", "garbage"])
def test_malformed_exif_date_is_none(date):
    d = decode_image(encode(marker_image(), "JPEG", exif=exif_bytes(date=date)))
    assert d.taken_at is None


@pytest.mark.parametrize("gps", [
    {1: "N", 2: (R(1, 0), R(0, 1), R(0, 1)), 3: "E", 4: (R(10, 1), R(0, 1), R(0, 1))},  # x/0
    {1: "N", 2: (R(95, 1), R(0, 1), R(0, 1)), 3: "E", 4: (R(10, 1), R(0, 1), R(0, 1))},  # lat > 90
    {1: "Q", 2: (R(45, 1), R(0, 1), R(0, 1)), 3: "E", 4: (R(10, 1), R(0, 1), R(0, 1))},  # bad ref
    {1: "N", 2: (R(45, 1), R(0, 1), R(0, 1))},  # no longitude
    {1: "N", 2: (R(0, 1), R(0, 1), R(0, 1)), 3: "E", 4: (R(0, 1), R(0, 1), R(0, 1))},  # no fix (0, 0)
])
def test_malformed_gps_is_none(gps):
    d = decode_image(encode(marker_image(), "JPEG", exif=exif_bytes(gps=gps)))
    assert d.gps_lat is None and d.gps_lon is None


@pytest.mark.parametrize("payload", [
    b"Exif\x00\x00II*\x00" + struct.pack("<I", 0x7FFFFFF0) + b"\x00" * 20,  # IFD0 offset past the end
    b"Exif\x00\x00MM\x00*\x00\x00\x00\x08" + b"\xff" * 40,  # garbage IFD entries
    b"Exif\x00\x00" + b"\x13\x37" * 30,  # not TIFF at all
    b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x63\x00\x00\x00",  # orientation 99
    None,  # well-formed EXIF, orientation 99
])
@pytest.mark.filterwarnings("error")
def test_corrupt_exif_is_ignored(payload):
    if payload is None:
        data = encode(marker_image(), "JPEG", quality=95, exif=exif_bytes(orientation=99, date="2020:01:01 00:00:00"))
    else:
        data = with_app1(encode(marker_image(), "JPEG", quality=95), payload)
    d = decode_image(data)
    assert (d.width, d.height) == (60, 40) and d.gps_lat is None
    assert d.taken_at == (datetime(2020, 1, 1) if payload is None else None)
    assert close(pixel(d, (2, 2)), (20, 20, 220), tol=40)


# ------------------------------------------------------------------------------------------------
# JPEG draft decoding
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_photo_jpeg() -> bytes:
    """A real photo upscaled to 4000×3000 (12 MP), as a camera JPEG."""
    img = load_sample("astronaut").resize((4000, 3000), Image.Resampling.BICUBIC)
    return encode(img, "JPEG", quality=90)


@pytest.mark.parametrize("target", [32, 224, 384, 1000])
def test_draft_keeps_short_side_at_least_target(big_photo_jpeg, target):
    d = decode_image(big_photo_jpeg, draft_size=target)
    assert (d.width, d.height) == (4000, 3000)  # metadata is the full size
    w, h = d.image.size
    assert min(w, h) >= target
    assert w < 4000  # a reduced DCT scale was used
    assert d.image.mode == "RGB"


def test_draft_with_rotation_and_non_jpeg(big_photo_jpeg):
    img = Image.open(io.BytesIO(big_photo_jpeg))
    rotated = encode(img, "JPEG", quality=80, exif=exif_bytes(orientation=8))
    d = decode_image(rotated, draft_size=224)
    assert (d.width, d.height) == (3000, 4000)
    assert d.image.size[0] < d.image.size[1] and min(d.image.size) >= 224
    png = encode(Image.new("RGB", (300, 200)), "PNG")
    assert decode_image(png, draft_size=32).image.size == (300, 200)  # drafting is JPEG-only


def test_draft_embedding_matches_full_decode(big_photo_jpeg, tiny_clip):
    full = decode_image(big_photo_jpeg)
    draft = decode_image(big_photo_jpeg, draft_size=tiny_clip.image_size)
    assert full.image.size == (4000, 3000) and draft.image.size[0] <= 500
    a, b = tiny_clip.embed_images([full.image, draft.image])
    assert float(a @ b) >= 0.99


# ------------------------------------------------------------------------------------------------
# strict decoding (the differential fuzz over every format is tests/test_fuzz_decode.py)
# ------------------------------------------------------------------------------------------------


def corrupt_png_idat() -> bytes:
    """A PNG whose image data is a broken zlib stream (one bit flipped inside IDAT, CRC fixed up)."""
    rng = np.random.default_rng(5)
    data = bytearray(encode(Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)), "PNG"))
    at = data.index(b"IDAT")
    length = struct.unpack(">I", data[at - 4:at])[0]
    data[at + 4 + length // 2] ^= 0x10
    data[at + 4 + length:at + 8 + length] = struct.pack(">I", zlib.crc32(bytes(data[at:at + 4 + length])))
    return bytes(data)


def test_corrupt_png_data_is_refused_not_a_blank_picture():
    # the regression: PNG getexif() loaded the pixels first, its error was swallowed with the EXIF,
    # and the second load() returned the zero-filled buffer as a valid image
    data = corrupt_png_idat()
    strict = Image.open(io.BytesIO(data))
    with pytest.raises(OSError):
        strict.load()
    with pytest.raises(ImageDecodeError) as ei:
        decode_image(data)
    assert ei.value.reason.startswith("corrupt PNG (") or ei.value.reason == "truncated PNG"


def test_strict_even_when_another_library_allows_truncated_images(monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = encode(load_sample("chelsea"), "PNG")
    with pytest.raises(ImageDecodeError, match="truncated PNG"):
        decode_image(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError):
        decode_image(corrupt_png_idat())
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_corrupt_jpeg_fails_in_draft_mode_too(big_photo_jpeg):
    cut = big_photo_jpeg[: len(big_photo_jpeg) * 2 // 3]
    for draft in (None, 224):
        with pytest.raises(ImageDecodeError, match="truncated JPEG"):
            decode_image(cut, draft_size=draft)
