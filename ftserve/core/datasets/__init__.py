"""Training-data formats and their line-by-line validation, shared by the api and the worker."""
