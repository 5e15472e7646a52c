"""A handler whose construction is slow and records what existed while it was loading.

Env: ``MARKER`` = file to write, ``SOCK`` = socket path, ``READY`` = ready file path.
"""

import json
import os
import time


class Slow:
    def __init__(self) -> None:
        seen = {
            "socket_exists": os.path.exists(os.environ["SOCK"]),
            "ready_exists": os.path.exists(os.environ["READY"]),
        }
        with open(os.environ["MARKER"], "w") as f:
            json.dump(seen, f)
        time.sleep(0.5)

    def handle(self, payload):
        return payload
