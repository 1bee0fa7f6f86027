"""Deployment: ONNX export, saving and loading model files, Dask."""
