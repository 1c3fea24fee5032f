"""Data: the released formats (formats.py), packing of learner rows (packing.py), teacher-data
synthesis (synthesize.py) and Qwen3-VL image preprocessing (images.py)."""
