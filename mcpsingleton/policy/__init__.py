"""What decides whether a server's sessions share a backend, when the shim's cached answer
(`shim/sharing.py`) has none: `rules` (`--scope`, config.toml, the built-in `catalog.toml`; it imports
tomllib, so only the shim's cold path and the operator commands load it) and `learnt` (what a running
backend declares, applied by the broker). Nothing is imported here."""
