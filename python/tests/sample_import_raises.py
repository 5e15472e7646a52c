"""A handler module that raises while being imported."""

raise RuntimeError("configuration file missing")
