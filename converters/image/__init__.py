"""GANs, VAEs and VQ-VAEs (GANSpec, VAESpec, VQVAESpec) to generator, decoder, encoder and prior graphs."""
