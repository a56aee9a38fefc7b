"""Data layer: image folders, task splits, decoded cache and episode samplers."""
