"""Diffusion: noise schedules, samplers, the LMI-guided denoiser and the network's condition."""
