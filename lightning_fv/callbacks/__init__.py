"""lightning_fv.callbacks"""
