"""Handlers of the gateway benchmark's Python mode (benches/src/gateway.rs, --python)."""

import time


def passthrough(payload):
    return payload


def talk(payload):
    """Streams tokens upstream, each stamped with the time it was yielded, then passes on."""
    # Time for the client to open its event stream, so every token is live.
    time.sleep(0.1)
    for i in range(int(payload.get("tokens", 5))):
        yield ("FLY", {"token": i, "yielded_at": time.time()})
    yield payload
