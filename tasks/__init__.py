"""Thin Prefect tasks: cache key, skip when done, one distill call, write through storage."""
