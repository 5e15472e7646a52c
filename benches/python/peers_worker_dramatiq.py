"""The Dramatiq worker of benches/python/peers.py: ``dramatiq peers_worker_dramatiq``."""

from peers import dramatiq_app

broker, _ = dramatiq_app()
