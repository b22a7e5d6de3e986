"""Prefect flows and the `siked` command line: composition only."""
