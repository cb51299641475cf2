"""The diffusion runtime: the sampling loop, classifier-free guidance, img2img, the numpy schedulers
and the on-device latent loop.
"""
