"""`mcpsingleton serve`: the local control server (dashboard, health, alerts, actions).

A process of its own: sessions and brokers never import this package (nor starlette/uvicorn, the optional
`serve` extra). It only reads what `ls`, `metrics` and `reap` read, through control.py, proctree and reaper.
"""
