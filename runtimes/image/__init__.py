"""The GAN, VAE and VQ-VAE runtimes: latent sampling, class labels, truncation, reconstruction and
interpolation.
"""
