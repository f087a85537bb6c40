"""Probability maps for whole micrographs.

:class:`Predictor` runs a Keras model through a traced ``tf.function`` (no
per-call ``model.predict`` overhead) over overlapping tiles
(:func:`nanoseg.inference.tiling.predict_tiled`; images no bigger than a batch of tiles go
through in one mirror-padded pass), optionally with test-time augmentation
(the 8 flips/rotations of the dihedral group) whose spread is a per-pixel
uncertainty. :func:`nanoseg.inference.loading.load_predictor` opens a saved model folder or an MLflow
model URI with its inference settings; :func:`nanoseg.inference.analyze.analyze` turns a micrograph into
particles with it.
"""

from __future__ import annotations

import math

import numpy as np

from nanoseg.config import PredictSettings
from nanoseg.errors import NanosegError
from nanoseg.inference.tiling import predict_tiled
from nanoseg.model.targets import dihedral, output_vectors


class Predictor:
    """Probability maps of whole images from a segmentation model.

    Parameters
    ----------
    model : keras.Model
        Input (N, H, W, 1) grayscale in [0, 1] (H, W divisible by 32), output
        (N, H, W, C) probabilities; precision handled inside the model.
    tile : int
        Tile side, a multiple of 32.
    overlap : int
        Overlap between tiles in px (half of it is the mirrored margin).
    batch : int
        Tiles per forward pass.
    tta : bool
        :meth:`probability` returns the mean over the 8 dihedral transforms.
    single_pass : bool
        Predict an image in one rectangular pass (mirrored margins, sides
        rounded up to multiples of 32) when it has no more pixels than a batch
        of tiles (``batch * tile**2``): same memory, no tile overlap to compute
        twice (a 1024x768 image with tile 512, batch 4: one 832x1088 pass
        instead of six 512x512 tiles, about 2x faster). False always tiles.
        Tiles along an axis never exceed what the image needs.
    """

    def __init__(self, model, tile=PredictSettings().tile, overlap=PredictSettings().overlap,
                 batch=PredictSettings().batch, tta=PredictSettings().tta, single_pass=True):
        import tensorflow as tf

        tile, overlap, batch = int(tile), int(overlap), int(batch)
        if tile < 32 or tile % 32:
            raise NanosegError(f"predict.tile = {tile}: the tile side must be a positive multiple of 32.")
        if not 0 <= overlap < tile:
            raise NanosegError(f"predict.overlap = {overlap}: must be at least 0 and smaller than the tile ({tile}).")
        if batch < 1:
            raise NanosegError(f"predict.batch = {batch}: must be at least 1.")
        self.model, self.tile, self.overlap, self.batch, self.tta = model, tile, overlap, batch, bool(tta)
        self.single_pass = bool(single_pass)
        self._forward = tf.function(
            lambda x: tf.cast(model(x, training=False), tf.float32),
            input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32)],
        )

    def predict_batch(self, tiles: np.ndarray) -> np.ndarray:
        """Model output (N, h, w, C) float32 for tiles (N, h, w, 1)."""
        return self._forward(np.asarray(tiles, dtype=np.float32)).numpy()

    def _tile_for(self, shape) -> tuple[int, int]:
        rows, cols = (32 * math.ceil((n + self.overlap) / 32) for n in shape[:2])
        if self.single_pass and rows * cols <= self.batch * self.tile**2:
            return rows, cols
        return min(rows, self.tile), min(cols, self.tile)

    def _single(self, image: np.ndarray) -> np.ndarray:
        prob = predict_tiled(self.predict_batch, image, self._tile_for(image.shape), self.overlap, self.batch)
        if prob.ndim == 3 and prob.shape[2] == 1:
            prob = prob[..., 0]
        return np.clip(prob, 0.0, 1.0)

    @staticmethod
    def _image(image) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        if image.ndim != 2 or min(image.shape) < 1:
            raise NanosegError(f"expected a 2-D grayscale image, got an array of shape {image.shape}.")
        return image

    def probability(self, image: np.ndarray) -> np.ndarray:
        """Probability map of a grayscale image in [0, 1].

        Returns (H, W) float32 in [0, 1] ((H, W, C) for multi-channel models);
        the TTA mean when the predictor was made with ``tta=True``.
        """
        image = self._image(image)
        if self.tta:
            return self.probability_with_uncertainty(image)[0]
        return self._single(image)

    @property
    def members(self) -> int:
        """How many models this ensemble averages (0 for a single model)."""
        from nanoseg.model.candidates import member_outputs

        return len(member_outputs(self.model))

    def probability_with_spread(self, image) -> tuple[np.ndarray, np.ndarray]:
        """An ensemble's mean output and the members' spread, in one pass (the same cost as :meth:`probability`).

        Returns
        -------
        mean : ndarray
            Like :meth:`probability` (without TTA).
        spread : (H, W) ndarray
            Per-pixel standard deviation of the members' foreground probabilities: a second
            uncertainty map beside the TTA one (members disagree where the training folds did).
        """
        import keras
        import tensorflow as tf

        from nanoseg.model.candidates import member_outputs
        from nanoseg.postprocess.decode import foreground_probability

        outs = member_outputs(self.model)
        if not outs:
            raise NanosegError("--spread needs an ensemble model (train.candidate: ensemble); this model is a single "
                               "network: use --tta for an uncertainty map.")
        if not hasattr(self, "_members_fn"):
            sub = keras.Model(self.model.input, outs)
            self._members_fn = tf.function(lambda x: tf.concat([tf.cast(o, tf.float32) for o in sub(x, training=False)],
                                                               axis=-1),
                                           input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32)])
        image = self._image(image)
        stacked = predict_tiled(lambda t: self._members_fn(np.asarray(t, np.float32)).numpy(), image,
                                self._tile_for(image.shape), self.overlap, self.batch)
        k = len(outs)
        per = np.clip(stacked.reshape(*stacked.shape[:2], k, -1), 0.0, 1.0)
        mean = per.mean(axis=2)
        if mean.shape[-1] == 1:
            mean = mean[..., 0]
        fg = np.stack([foreground_probability(per[:, :, i, :] if per.shape[-1] > 1 else per[:, :, i, 0])
                       for i in range(k)])
        return mean.astype(np.float32), fg.std(axis=0).astype(np.float32)

    def probability_with_uncertainty(self, image) -> tuple[np.ndarray, np.ndarray]:
        """Test-time augmentation over the 8 dihedral transforms (flips x rot90).

        Each view's output is turned back (:func:`nanoseg.model.targets.dihedral`; the HoVer maps of a
        ``classes3_hv`` model as vectors) before the views are averaged.

        Returns
        -------
        mean, std : ndarray
            float32 maps like :meth:`probability`; ``std`` (per-pixel standard
            deviation over the 8 predictions) is an uncertainty estimate.
        """
        image = self._image(image)
        mean = m2 = None
        n = 0
        for k in range(4):  # running mean and variance (Welford), float32: not 8 maps in memory at once
            for flip in (False, True):
                view = dihedral(image, k, flip)
                pred = self._single(np.ascontiguousarray(view))
                pred = dihedral(pred, k, flip, output_vectors(pred), invert=True)  # HoVer maps turned as vectors
                n += 1
                if mean is None:
                    mean, m2 = np.array(pred, np.float32), np.zeros(pred.shape, np.float32)
                    continue
                delta = pred - mean
                mean += delta / np.float32(n)
                m2 += delta * (pred - mean)
        return mean, np.sqrt(np.maximum(m2 / np.float32(n), 0, out=m2), out=m2)


# --------------------------------------------------------------------------- outputs


