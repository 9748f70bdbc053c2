"""The tabular laboratory: exact games, the theory's algorithms under bandit feedback, claims."""
