"""The tabular runtime: CTGAN / TVAE rows sampled and inverse-transformed in numpy, written as CSV, JSON lines or
Parquet."""
