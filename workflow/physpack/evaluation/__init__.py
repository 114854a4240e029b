"""Evaluation: metrics, predictions and figures of a trained model."""
