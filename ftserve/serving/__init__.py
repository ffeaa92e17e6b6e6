"""The inference HTTP role: completions and chat routes over the engine, with the org's model names."""

from ftserve.serving.app import install

__all__ = ["install"]
