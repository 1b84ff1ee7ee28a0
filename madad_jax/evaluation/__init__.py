"""Evaluation: the slice and volume protocols, metrics, the baseline, figures and predict."""
