"""Database layer: SQLAlchemy models and sessions."""
