"""The Celery worker of benches/python/peers.py: ``celery -A peers_worker_celery worker``."""

from peers import celery_app

app, _ = celery_app()
