"""The dataset: DVC import, image/mask pairs, the seeded split, the manifest and its validation gate."""
