"""The alignment head: MGA nodes, text passes, gathering and noise around the alignment core, for every supported model."""
