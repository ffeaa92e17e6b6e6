"""Base models: building, preparing and loading them without a model hub."""
