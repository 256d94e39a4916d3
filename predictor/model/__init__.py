"""Model loading and shapes: reading ONNX files safely (external data, fixed inputs) and tensor shapes from a source of
truth (graph, shapes)."""
