"""Artifact storage: the only code that knows paths, Parquet, schemas, manifests and fsspec URLs."""
