"""Training pipeline stages: tokenize, batch, train, checkpoint, export."""
