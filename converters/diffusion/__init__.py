"""Diffusion: diffusers pipelines and custom denoisers (DiffusionSpec) to denoiser, text-encoder and
VAE graphs; the scheduler-step graphs the runtime ships.
"""
