"""Evaluation: VQA scoring and prediction."""
