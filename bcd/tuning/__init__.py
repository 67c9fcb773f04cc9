"""Hyperparameter search with Optuna: the study and its search space, trials, pruning inside a run."""
