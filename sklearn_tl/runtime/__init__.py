"""The runtime layer: device and precision, the batched forward pass, ONNX Runtime."""
