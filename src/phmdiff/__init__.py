"""PHMDiff: Pyramid Hierarchical Masked Diffusion for medical image synthesis."""

__version__ = "0.1.0"
