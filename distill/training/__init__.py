"""Student training: the losses (`losses`, `infonce`), the batches (`data`) and the loop (`loop`).

Submodules import torch; this package file does not, so importing it stays cheap.
"""
