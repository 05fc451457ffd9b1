"""Generative diffusion models on the core's linear SDEs (work in progress)."""
