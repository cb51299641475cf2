"""Shared quantization: each family's default scheme per target, the graph rewrites ONNX Runtime's
quantizers need, and the PSNR-gated quantization of conv-net graphs (diffusion, gan, vae, vq-vae).
"""
