"""Tiny random checkpoints of every supported model type, built locally: what the tests, the demo and the experiments load."""
