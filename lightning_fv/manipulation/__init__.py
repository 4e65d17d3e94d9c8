"""lightning_fv.manipulation"""
