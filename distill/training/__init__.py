"""Student training: the losses (`losses`, `infonce`), the batches (`data`), the loop (`loop`) and
what it uses (LoRA, checkpoints, validation, launching).

Submodules import torch; this package file does not, so importing it stays cheap.
"""
