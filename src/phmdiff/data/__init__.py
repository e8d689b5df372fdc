"""Data: the phantom generator, readers of NIfTI/PNG layouts, slice preparation, datasets, latent cache."""
