"""The agent: its protocol with the policy, its tools, and the rollout loop."""
