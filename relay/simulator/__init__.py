"""A local stand-in for the Azure OpenAI Realtime API (WebSocket, both protocol families).

The relay's tests, demo and benchmark use it as the upstream, and developers
can run it with ``realtime-relay simulate``. See ``docs/simulator.md``.

Layers:

* Sans-I/O core: :class:`SimSession` (engine) and the pure modules it uses:
  schema, overrides, conversation, items, turns, responder, responses,
  tools, mcp, usage, vad, audio, handshake, faults, stats, control.
* Network edge: :class:`Simulator` (server) and the per-connection driver.

Importing this package has no side effects.
"""

from relay.simulator.audio import AudioFormat, silence_pcm16, speech_like_pcm16
from relay.simulator.engine import SessionOptions, SimSession
from relay.simulator.faults import Faults
from relay.simulator.handshake import Accept, AccessPolicy, Reject, decide
from relay.simulator.schema import (
    SchemaError,
    Settings,
    default_session,
    update_session,
)
from relay.simulator.server import Simulator
from relay.simulator.stats import HandshakeRecord, Stats
from relay.simulator.wire import Family, IdFactory


__all__ = [
    "Accept",
    "AccessPolicy",
    "AudioFormat",
    "Family",
    "Faults",
    "HandshakeRecord",
    "IdFactory",
    "Reject",
    "SchemaError",
    "SessionOptions",
    "Settings",
    "SimSession",
    "Simulator",
    "Stats",
    "decide",
    "default_session",
    "silence_pcm16",
    "speech_like_pcm16",
    "update_session",
]
