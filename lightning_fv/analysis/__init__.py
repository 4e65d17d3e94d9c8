"""lightning_fv.analysis"""
