"""The steps: their list (pipeline.py), whether each is done (gate.py), run or reuse (steps.py), and one
thin Prefect task per step kind: one `distill` call, written through `storage`, never deciding for
itself whether it is done."""
