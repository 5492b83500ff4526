"""landscape: loss-landscape diagnostics and sharpness-aware optimizers for PyTorch."""

__version__ = "0.1.0"
