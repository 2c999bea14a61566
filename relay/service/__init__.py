"""The service: the ASGI app and server, the endpoint and session driver, and their edges (metrics, logs, drain, credentials, limits backends, TLS)."""
