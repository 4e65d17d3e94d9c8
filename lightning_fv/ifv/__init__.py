"""lightning_fv.ifv"""
