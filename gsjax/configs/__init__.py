"""The shipped configs: `--config=configs/NAME.py[:preset]` finds them wherever the command runs
(`gsjax.config.resolve`). Each file's docstring says what it runs; `--help` prints it."""
