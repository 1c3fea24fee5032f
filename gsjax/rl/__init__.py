"""Reinforcement learning: GRPO math (grpo.py) and, later, the trainer."""
