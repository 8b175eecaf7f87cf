"""Serving the winning adapters with Ray Serve behind an OpenAI-compatible API."""
