"""Realtime Relay: a policy-enforcing WebSocket relay for the Azure OpenAI Realtime API.

Importing :mod:`relay` has no side effects.
"""

__version__ = "0.1.0"
