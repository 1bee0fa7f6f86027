"""The model layer: backbone specs and their registry, weights, model sources, the embedder and its build."""
