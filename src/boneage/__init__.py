"""Bone-age research framework: five published methods as PyTorch Lightning experiments."""

__version__ = "0.1.0"
