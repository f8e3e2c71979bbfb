"""Model training: the scorecard champion and its challengers."""
