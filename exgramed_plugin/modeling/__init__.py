"""The ``exgra_med`` model (LLaVA-Med v1 layout) and the readers of its published checkpoints; no swift here."""
