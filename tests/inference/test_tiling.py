"""Overlap-tile prediction: exact reconstruction, small and odd images, channels."""

from __future__ import annotations

import numpy as np
import pytest

from nanoseg.inference.tiling import blend_weights, pad_widths, predict_tiled, tile_grid


def identity(tiles):
    assert tiles.dtype == np.float32 and tiles.ndim == 4 and tiles.shape[3] == 1
    return tiles


@pytest.mark.parametrize("shape", [(768, 1024), (300, 200), (37, 5), (1, 1), (129, 257)])
def test_identity_reconstructs_the_image(shape):
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    out = predict_tiled(identity, image, tile=128, overlap=32, batch=3)
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image, atol=1e-6)


def test_tiles_are_mirror_padded_and_fixed_size():
    seen = []

    def record(tiles):
        seen.append(tiles.shape)
        return tiles

    image = np.arange(40 * 70, dtype=np.float32).reshape(40, 70)
    predict_tiled(record, image, tile=64, overlap=16, batch=2)
    assert all(s[1:] == (64, 64, 1) for s in seen) and all(s[0] <= 2 for s in seen)
    assert pad_widths(image.shape, 64, 16) == [(8, 16), (8, 8)]  # 40 + 16 < 64: pad to one tile


def test_multichannel_output_and_channel_input():
    image = np.random.default_rng(1).random((90, 130), dtype=np.float32)
    out = predict_tiled(lambda t: np.concatenate([t, 1 - t, 2 * t], axis=-1), image, tile=64, overlap=16)
    assert out.shape == (90, 130, 3)
    np.testing.assert_allclose(out[..., 1], 1 - image, atol=1e-6)
    np.testing.assert_allclose(out[..., 2], 2 * image, atol=1e-6)
    kept = predict_tiled(identity, image[..., None], tile=64, overlap=16)
    assert kept.shape == (90, 130, 1)


def test_blend_hides_tile_offsets():
    """A model that adds a constant per tile: blending gives a smooth field, no jumps."""
    counter = iter(range(1000))
    image = np.zeros((200, 300), np.float32)
    out = predict_tiled(lambda t: np.stack([np.full(t.shape[1:], next(counter), np.float32) for _ in t]),
                        image, tile=64, overlap=32, batch=1)
    assert np.abs(np.diff(out, axis=1)).max() < 0.5  # neighbours differ by 1 per tile; raw seams would jump


def test_grid_covers_everything_with_overlap():
    origins = tile_grid((1000, 600), 256, 64)
    rows = sorted({r for r, _ in origins})
    cols = sorted({c for _, c in origins})
    assert rows[0] == 0 and rows[-1] == 1000 - 256 and cols[-1] == 600 - 256
    assert all(b - a <= 256 - 64 for a, b in zip(rows, rows[1:]))
    assert tile_grid((100, 100), 256, 64) == [(0, 0)]
    with pytest.raises(ValueError):
        tile_grid((100, 100), 64, 64)


def test_blend_weights():
    w = blend_weights(64, 16)
    assert w.shape == (64, 64) and w.dtype == np.float32
    assert w.min() > 0 and w.max() == 1.0
    np.testing.assert_array_equal(w, w.T)
    assert np.all(blend_weights(32, 0) == 1.0)


def test_bad_predict_batch_shape():
    with pytest.raises(ValueError, match="returned shape"):
        predict_tiled(lambda t: t[:, :10], np.zeros((40, 40), np.float32), tile=32, overlap=8)


def test_rectangular_tiles():
    image = np.random.default_rng(2).random((70, 200), dtype=np.float32)
    shapes = []

    def record(tiles):
        shapes.append(tiles.shape[1:3])
        return tiles

    out = predict_tiled(record, image, tile=(96, 128), overlap=16)
    np.testing.assert_allclose(out, image, atol=1e-6)
    assert set(shapes) == {(96, 128)}
    assert blend_weights((32, 64), 8).shape == (32, 64)


def test_accumulators_are_float32_so_large_images_fit():
    """The weighted sums are float32: the peak memory of a 2048 x 2048 single-channel prediction stays near
    five float32 copies of the image (float64 sums needed about nine)."""
    import tracemalloc

    image = np.random.default_rng(3).random((2048, 2048), dtype=np.float32)
    tracemalloc.start()
    try:
        out = predict_tiled(identity, image, tile=512, overlap=64, batch=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, image, atol=1e-6)
    assert peak < 6.5 * image.nbytes, f"peak {peak / 2**20:.0f} MiB for a {image.nbytes / 2**20:.0f} MiB image"
