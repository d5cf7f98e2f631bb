"""ml_collections configs; each module's `get_config()` returns a ConfigDict."""
