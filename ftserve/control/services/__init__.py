"""Business rules with no HTTP: files, jobs and their state machine, models."""
