"""The WebSocket transport: frames, a connection's leg, the upstream's handshake client, and the uvicorn adapters."""
