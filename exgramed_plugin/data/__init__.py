"""Data formats, preprocessing, benchmarks and demo data."""
