"""Data formats, preprocessing, tiny checkpoints and demo data."""
