"""Supervised fine-tuning on multi-turn agent trajectories (sft_data.json)."""
