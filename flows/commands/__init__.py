"""The command line's subcommands (flows/cli.py dispatches to them): run, plan, status, verify, gc, train, export, data listing, config files and preflight checks."""
