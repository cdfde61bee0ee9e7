"""infodyn: entropy rate and redundancy of transformer layers during fine-tuning."""

__version__ = "0.1.0"
