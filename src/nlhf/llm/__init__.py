"""Language models: the NLHF trainer, its policies, rollouts, judges, evaluation and report."""
