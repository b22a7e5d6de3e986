"""The bodies of steps that run in child processes (engines, Ray replicas, training), and their jobs.

Nothing here imports Prefect: a spawned child or a Ray actor imports these modules, and should pay
for the method and storage only. The Prefect tasks around them are the modules of `tasks/`.
"""
