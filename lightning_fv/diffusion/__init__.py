"""lightning_fv.diffusion"""
