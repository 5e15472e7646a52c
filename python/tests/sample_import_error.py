"""A handler module whose own import fails (a dependency is missing)."""

import troupe_no_such_dependency  # noqa: F401


def handle(payload):
    return payload
