"""lightning_fv: reliable feature visualization for PyTorch Lightning.

Nothing happens at import time: no device is chosen and no weights are loaded.
"""

__version__ = "0.1.0"
