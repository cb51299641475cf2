"""Shared by the families that export with torch.onnx.export: random draws lifted into graph inputs,
batch checks, and stand-ins for custom ops.
"""
