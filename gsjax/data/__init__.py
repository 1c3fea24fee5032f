"""Data: the released formats (formats.py); pipelines and synthesis come later."""
