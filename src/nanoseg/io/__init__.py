"""Reading and writing files: micrographs (TIFF/PNG, pixel size, data bar), masks, result folders, Fiji ROI sets."""
