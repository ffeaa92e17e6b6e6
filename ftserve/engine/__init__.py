"""Inference role: resident bases, adapter cache, batched generation, HTTP endpoints."""
