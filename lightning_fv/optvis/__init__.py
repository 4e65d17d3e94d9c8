"""lightning_fv.optvis"""
