"""ftserve GPU side: the Celery worker that trains, and the inference server."""
