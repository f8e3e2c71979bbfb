"""Research: Optuna tuning of the challengers and the champion-challenger governance report."""
