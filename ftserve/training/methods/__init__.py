"""Training methods sharing one loop: supervised (token-weighted cross-entropy) and DPO, each registered by name
in registry.py beside its torch-free description in ftserve/core/methods."""
