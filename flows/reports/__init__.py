"""Reports: the run's report and plots, the experiment's results and report, what the Prefect UI shows."""
