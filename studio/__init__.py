"""Controllable-diffusion studio: one denoising engine, pluggable techniques."""

__version__ = "0.1.0"
