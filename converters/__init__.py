"""Converters: PyTorch models to edgegen artifacts (needs the ``[convert]`` extra).

These modules import torch, onnx and optimum; the runtime never imports them.
"""
