"""Diffusion formulations: EDM preconditioning (edm.py) and Gaussian diffusion (DDPM/DDIM, respacing)."""
