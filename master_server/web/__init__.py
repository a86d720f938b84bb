"""The master's HTTP side: a REST API over the same services as gRPC, and the web UI.

``master_server.web.api`` builds the ASGI app, ``master_server.web.server`` runs it with uvicorn in
a thread of the master process, ``master_server.web.metrics`` answers chart series (through
:mod:`master_server.charts`),
and ``static/`` holds the UI (plain HTML, CSS and ES modules; no build step, no CDN).
"""
