"""lightning_fv.adversarial"""
