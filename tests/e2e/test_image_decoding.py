"""The folder dataset reads every kind of image file as the picture it shows.

Each file is written from a reference picture made with numpy, and must read back as that picture once
converted to RGB as a backbone converts it (``Image.convert("RGB")``).
"""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cafe_datasets.folder import ImageFolder, ImageTooLargeError

RNG = np.random.default_rng(7)
PICTURE = RNG.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)  # not square: a rotation shows


def read_back(tmp_path, name):
    """The RGB array a backbone gets from the folder dataset for the one file ``name`` in ``tmp_path``."""
    dataset = ImageFolder(tmp_path)
    (item,) = [dataset[i] for i in range(len(dataset)) if dataset.files[i].name == name]
    return np.asarray(item.image.convert("RGB"))


def test_sixteen_bit_grayscale_png(tmp_path):
    gray = PICTURE[..., 0]
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")  # 257 * v: v in 16 bits
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    np.testing.assert_array_equal(read_back(tmp_path, "gray16.png"), np.repeat(gray[..., None], 3, axis=2))


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_sixteen_bit_rgb_png(tmp_path):
    samples = PICTURE.astype(">u2") * 257  # big-endian 16-bit RGB, as PNG stores it
    rows = b"".join(b"\x00" + row.tobytes() for row in samples)  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", PICTURE.shape[1], PICTURE.shape[0], 16, 2, 0, 0, 0)
    (tmp_path / "rgb16.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )
    np.testing.assert_array_equal(read_back(tmp_path, "rgb16.png"), PICTURE)


def test_palette_image_with_a_transparent_colour(tmp_path):
    palette = RNG.integers(0, 256, size=(16, 3), dtype=np.uint8)
    indices = RNG.integers(0, 16, size=PICTURE.shape[:2], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.flatten().tolist())
    image.info["transparency"] = 3
    image.save(tmp_path / "palette.png", transparency=3)
    np.testing.assert_array_equal(read_back(tmp_path, "palette.png"), palette[indices])


def test_cmyk_jpeg(tmp_path):
    cmyk = np.concatenate([255 - PICTURE, np.zeros_like(PICTURE[..., :1])], axis=2)  # no black ink
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    error = np.abs(read_back(tmp_path, "cmyk.jpg").astype(int) - PICTURE.astype(int))
    assert error.mean() < 8  # JPEG is lossy; an inverted or black picture would be off by about 128


def test_exif_rotated_photo(tmp_path):
    stored = np.rot90(PICTURE, k=1)  # as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "rotated.png", exif=exif)
    np.testing.assert_array_equal(read_back(tmp_path, "rotated.png"), PICTURE)


def test_animated_gif_reads_its_first_frame(tmp_path):
    palette = RNG.integers(0, 256, size=(4, 3), dtype=np.uint8)
    frames = []
    for seed in (1, 2):
        indices = np.random.default_rng(seed).integers(0, 4, size=PICTURE.shape[:2], dtype=np.uint8)
        frame = Image.fromarray(indices, mode="P")
        frame.putpalette(palette.flatten().tolist())
        frames.append((frame, indices))
    frames[0][0].save(tmp_path / "animated.gif", save_all=True, append_images=[frames[1][0]], duration=100)
    assert Image.open(tmp_path / "animated.gif").n_frames == 2
    np.testing.assert_array_equal(read_back(tmp_path, "animated.gif"), palette[frames[0][1]])


def test_a_decompression_bomb_is_a_named_error(tmp_path):
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # declares 10^10 grayscale pixels
    (tmp_path / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00"))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png' is too large to decode safely .* downscale"):
        ImageFolder(tmp_path)[0]
