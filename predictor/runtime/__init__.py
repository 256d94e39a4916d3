"""The device's runtime: what a device runs models with and onnxruntime's own graph optimizer, sandboxed (optimizer),
and what decides a device's kernels, whether this host builds them as the device does (devices)."""
