"""The method itself: strategies, parsing, sandbox, engines, verification, losses, training, mixing.

Knows nothing of Prefect or of where files live (see docs/STYLE notes in README).
"""
