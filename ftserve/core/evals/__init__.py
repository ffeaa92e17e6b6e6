"""The Evals API's torch-free shared parts: items (read and checked against the eval's item_schema) and the
records the eval runner and its store exchange."""
