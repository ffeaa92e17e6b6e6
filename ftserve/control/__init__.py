"""ftserve control plane: files, fine-tuning jobs, models and the HTTP API (never imports torch)."""
