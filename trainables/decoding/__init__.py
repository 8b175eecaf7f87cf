"""The decoding runtime that evaluation and serving share: the running batch (batch.py), its
key/value cache (cache.py), and what a model is called with to decode (calls.py)."""
