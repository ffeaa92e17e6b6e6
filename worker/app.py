"""The worker's entry point for `celery -A worker.app worker`: the Celery app on this process's settings."""

from __future__ import annotations

from app.broker import celery_for
from app.config import get_settings

celery = celery_for(get_settings())
celery.conf.imports = ("worker.tasks",)
