"""lightning_fv.modules"""
