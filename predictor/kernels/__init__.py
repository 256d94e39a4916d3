"""Kernels as the runtime executes them: extraction from the optimized graph and their canonical keys (keys), and a
key's numeric features for the regressors (features)."""
