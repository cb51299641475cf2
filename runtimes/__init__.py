"""The torch-free runtime: ONNX Runtime sessions and the sampling loop of each family.

Nothing under this package may import torch, transformers, diffusers or optimum,
directly or indirectly (a test checks it in a subprocess).  Modules are imported where
they are used; ``edgegen.load`` is the usual entry point.
"""
