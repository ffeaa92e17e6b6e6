"""Alembic migrations; a package so installed copies of ftserve can find them."""
