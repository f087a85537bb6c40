"""From an image to probability maps: tiled prediction, resampling, polarity, the loaded predictor."""
