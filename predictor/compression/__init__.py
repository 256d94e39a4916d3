"""Compression configs and what they do: the config (config), applying it to a model for real (apply, with channel
pruning in pruning), and applying it at the kernel level in microseconds (fastpath)."""
