"""autoft: robust fine-tuning of CLIP models by searching the fine-tuning objective (AutoFT)."""

__version__ = "0.1.0"
