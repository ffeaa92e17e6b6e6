"""The worker's entry point for `celery -A worker.app worker`: the Celery app on this process's settings."""

from __future__ import annotations

from ftserve.control.broker import celery_for
from ftserve.core.config import get_settings

celery = celery_for(get_settings())
celery.conf.imports = ("ftserve.worker.tasks",)
