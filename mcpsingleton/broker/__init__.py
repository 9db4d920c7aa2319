"""The broker process, one per user (`python -m mcpsingleton.broker`): every key's `Server`, its sessions,
backend slots and their I/O, around the sans-IO multiplexer (`mux/`). Nothing is imported here, so that
`mcpsingleton.broker.X` costs only X."""
