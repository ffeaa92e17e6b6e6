"""Training methods: supervised (token-weighted cross-entropy) and DPO, sharing one loop."""
