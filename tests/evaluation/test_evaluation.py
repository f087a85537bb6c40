import numpy as np
from skimage.draw import disk

from nanoseg.evaluation.scoring import training_scale


def test_training_scale_reports_pixel_size_and_particle_sizes():
    masks = []
    for _ in range(2):
        m = np.zeros((120, 120), bool)
        for c in (30, 90):
            m[disk((30, c), 10)] = True
            m[disk((90, c), 10)] = True
        m[0:3, 0:3] = True  # a speck at the border: not counted
        masks.append(m)
    s = training_scale(masks, [2.0, 3.0])
    assert s["pixel_size_nm"] == 2.5
    assert abs(s["ecd_px"]["median"] - 20.0) < 0.5  # discs of radius 10 px
    assert 38 < s["ecd_nm"]["p05"] <= s["ecd_nm"]["p95"] < 62
    none = training_scale(masks, [None, None])
    assert none["pixel_size_nm"] is None and none["ecd_nm"] is None and none["ecd_px"]["median"] > 19
