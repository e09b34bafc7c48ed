"""byola: BYOL for Audio — pretraining, embedding and evaluation of general-purpose audio representations."""
__version__ = "0.1.0"
