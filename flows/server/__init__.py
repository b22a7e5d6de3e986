"""Server operations: deployments, schedules, a local Prefect server on PostgreSQL."""
