"""The data layer: images in, preprocessed tensors out; imports nothing that builds networks.

``config`` (:class:`DataConfig` and its resolver), ``augment`` (crop policies),
``transforms`` (the geometric transforms), ``decode`` (files and PIL images to
tensors), ``keys`` (content digests), ``inputs`` (any ``X`` as an image source),
``dataset`` (the torch Dataset, collation), ``folders`` (image folders).
"""
