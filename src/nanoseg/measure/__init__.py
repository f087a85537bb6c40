"""From instance labels to numbers: the per-particle table (nm) and the size distribution."""
