"""From probability maps to binary masks and instance labels (threshold, watershed decoders)."""
