"""Reloader: a real relay and simulator, the configuration file on disk, reloads applied or refused."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from websockets.exceptions import InvalidStatus

from relay.config import Settings, load_settings
from relay.service.jwt_auth import JwtVerifier
from relay.service.reload import ConfigFile, Reloader
from relay.service.server import RunningRelay, running_relay
from relay.simulator import Simulator
from tests.helpers.clients import connect_relay, receive_event
from tests.helpers.timing import SECOND


KEY_A = "reload-key-of-app-a"
KEY_B = "reload-key-of-app-b"
UPSTREAM_KEY = "reload-upstream-key"
ENV = {"UPSTREAM_KEY": UPSTREAM_KEY, "OTHER_KEY": UPSTREAM_KEY}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def config(upstream: str, *, clients: str = "", port: int = 0, extra: str = "") -> str:
    return f"""
listen: {{host: 127.0.0.1, port: {port}}}
metrics: {{host: 127.0.0.1, port: 0}}
upstream: {{endpoint: {upstream}, auth: {{type: api_key, api_key_env: UPSTREAM_KEY}}}}
deployments: {{gpt-realtime: }}
clients:
  - {{id: app-a, key_sha256: "{sha(KEY_A)}"}}
{clients}
{extra}
"""


def closed(*verifiers: JwtVerifier) -> tuple[bool, ...]:
    return tuple(verifier.closed for verifier in verifiers)


@dataclass
class Reloading:
    simulator: Simulator
    relay: RunningRelay
    reloader: Reloader
    path: Path

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.relay.port}/openai/v1/realtime?model=gpt-realtime"

    def counted(self, result: str) -> float:
        value = self.relay.app.metrics.registry.get_sample_value(
            "relay_config_reload_total", {"result": result}
        )
        assert value is not None
        return value

    async def works(self, key: str) -> bool:
        """Whether a session starts with ``key`` (else the handshake was refused 401)."""
        status = await handshake_status(self.url(), key)
        assert status in (101, 401)
        return status == 101


async def handshake_status(url: str, key: str) -> int:
    """101 once ``session.created`` arrives, else the HTTP status of the refusal."""
    try:
        async with connect_relay(url, key=key) as ws:
            event = await receive_event(ws)
    except InvalidStatus as refused:
        return refused.response.status_code
    assert event["type"] == "session.created"
    return 101


@asynccontextmanager
async def reloading(
    tmp_path: Path,
    *,
    interval: float = 3600,
    text: Callable[[str], str] = config,
    adjust: Callable[[Settings], Settings] | None = None,
) -> AsyncIterator[Reloading]:
    """A relay serving ``relay.yaml`` in ``tmp_path``; by default it polls too rarely to matter.

    ``text`` writes the first file from the simulator's URL; ``adjust`` is the
    reloader's (what the command line does to each generation).
    """
    async with Simulator.start(api_keys={UPSTREAM_KEY}, audio_speed=None) as simulator:
        path = tmp_path / "relay.yaml"
        path.write_text(text(simulator.url))
        source = (
            ConfigFile(path, ENV) if adjust is None else ConfigFile(path, ENV, adjust)
        )
        async with running_relay(
            load_settings(path, ENV), config=source, reload_interval=interval
        ) as relay:
            assert relay.reloader is not None
            yield Reloading(simulator, relay, relay.reloader, path)


async def test_a_new_client_works_after_a_reload(tmp_path: Path) -> None:
    """A client added to the file is admitted after reload(); generation 2, counted ok."""
    async with reloading(tmp_path) as r:
        assert not await r.works(KEY_B)
        r.path.write_text(
            config(
                r.simulator.url,
                clients=f'  - {{id: app-b, key_sha256: "{sha(KEY_B)}"}}',
            )
        )
        with capture_logs() as logs:
            assert await r.reloader.reload() == "ok"
        assert await r.works(KEY_B)
        assert await r.works(KEY_A)
        assert r.relay.app.generation == 2
        assert r.counted("ok") == 1
        assert r.relay.app.metrics.config_generation._value.get() == 2
        (reloaded,) = [log for log in logs if log["event"] == "config.reloaded"]
        assert reloaded["clients_added"] == ["app-b"]
        assert reloaded["changed"] == ["clients"]


async def test_the_same_content_is_not_a_reload(tmp_path: Path) -> None:
    """SIGHUP on an unchanged file, or a comment added: nothing counted, same generation."""
    async with reloading(tmp_path) as r:
        assert await r.reloader.reload() == "unchanged"
        r.path.write_text(r.path.read_text() + "# a comment\n")
        assert await r.reloader.reload() == "unchanged"
        assert r.relay.app.generation == 1
        assert (r.counted("ok"), r.counted("error")) == (0, 0)


@pytest.mark.parametrize(
    ("garbage", "message"),
    [
        ("listen: [not, closed", "relay.yaml: "),
        ("", "relay.yaml: "),
        ("unknown_key: 1\n", "unknown_key"),
        ("- a list\n", "relay.yaml"),
    ],
)
async def test_a_broken_file_changes_nothing(
    tmp_path: Path, garbage: str, message: str
) -> None:
    """Not YAML, empty, an unknown key, not a mapping: refused with the parser's message; the old generation serves."""
    async with reloading(tmp_path) as r:
        text = (
            config(r.simulator.url) + garbage
            if garbage.startswith("unknown")
            else garbage
        )
        r.path.write_text(text)
        with capture_logs() as logs:
            assert await r.reloader.reload() == "error"
        (failed,) = [log for log in logs if log["event"] == "config.reload_failed"]
        assert failed["reason"] == "invalid"
        assert failed["generation"] == 1
        assert message in failed["errors"][0]
        assert r.counted("error") == 1
        assert r.relay.app.generation == 1
        assert await r.works(KEY_A)


async def test_a_refused_change_names_the_key_and_changes_nothing(
    tmp_path: Path,
) -> None:
    """listen.port changed beside a new client: refused as a whole; the new client is not admitted."""
    async with reloading(tmp_path) as r:
        r.path.write_text(
            config(
                r.simulator.url,
                port=r.relay.port + 1,
                clients=f'  - {{id: app-b, key_sha256: "{sha(KEY_B)}"}}',
            )
        )
        with capture_logs() as logs:
            assert await r.reloader.reload() == "error"
        (failed,) = [log for log in logs if log["event"] == "config.reload_failed"]
        assert failed["reason"] == "refused"
        assert failed["errors"] == [
            f"listen.port: cannot change without a restart (0 -> {r.relay.port + 1}): "
            "the listener is bound at start-up"
        ]
        assert not await r.works(KEY_B)
        assert r.relay.app.generation == 1


async def test_a_directory_or_a_missing_file_changes_nothing(tmp_path: Path) -> None:
    """The path gone, then a directory in its place: refused on SIGHUP, old generation serves."""
    async with reloading(tmp_path) as r:
        r.path.unlink()
        assert await r.reloader.reload() == "error"
        r.path.mkdir()
        with capture_logs() as logs:
            assert await r.reloader.reload() == "error"
        assert "cannot read the configuration file" in logs[-1]["errors"][0]
        assert r.counted("error") == 2
        assert await r.works(KEY_A)


async def test_a_file_missing_for_one_poll_is_not_reported(tmp_path: Path) -> None:
    """A poll that cannot read the file waits for the next before reporting it, once."""
    async with reloading(tmp_path) as r:
        text = r.path.read_text()
        r.path.unlink()
        assert await r.reloader.poll() == "unchanged"
        r.path.write_text(text)
        assert await r.reloader.poll() == "unchanged"
        r.path.unlink()
        assert await r.reloader.poll() == "unchanged"
        assert await r.reloader.poll() == "error"
        assert await r.reloader.poll() == "unchanged"
        assert r.counted("error") == 1
        # Back with a change: applied.
        r.path.write_text(
            config(
                r.simulator.url,
                clients=f'  - {{id: app-b, key_sha256: "{sha(KEY_B)}"}}',
            )
        )
        assert await r.reloader.poll() == "ok"
        assert await r.works(KEY_B)


async def test_a_configmap_symlink_swap_is_polled(tmp_path: Path) -> None:
    """relay.yaml -> ..data/relay.yaml, ..data -> a new directory (the kubelet's swap): seen by the poll."""
    async with Simulator.start(api_keys={UPSTREAM_KEY}, audio_speed=None) as simulator:
        first = tmp_path / "..2026_01"
        first.mkdir()
        (first / "relay.yaml").write_text(config(simulator.url))
        (tmp_path / "..data").symlink_to(first.name)
        path = tmp_path / "relay.yaml"
        path.symlink_to("..data/relay.yaml")
        async with running_relay(
            load_settings(path, ENV), config=ConfigFile(path, ENV), reload_interval=0.05
        ) as relay:
            second = tmp_path / "..2026_02"
            second.mkdir()
            (second / "relay.yaml").write_text(
                config(
                    simulator.url,
                    clients=f'  - {{id: app-b, key_sha256: "{sha(KEY_B)}"}}',
                )
            )
            # The kubelet's atomic swap: a new symlink renamed over ..data.
            (tmp_path / "..data_tmp").symlink_to(second.name)
            os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
            async with asyncio.timeout(5 * SECOND):
                for _ in range(500):
                    if relay.app.generation != 1:
                        break
                    await asyncio.sleep(0.05)
            assert relay.app.generation == 2


async def test_unchanged_upstream_keeps_its_provider_and_breaker(
    tmp_path: Path,
) -> None:
    """A client change keeps the upstream's provider and breaker; a new auth gets a new provider, the old one is retired."""
    async with reloading(tmp_path) as r:
        pools = r.relay.app.upstreams
        provider, breaker = pools.providers[0], pools.breakers["gpt-realtime/0"]
        r.path.write_text(
            config(
                r.simulator.url,
                clients=f'  - {{id: app-b, key_sha256: "{sha(KEY_B)}"}}',
            )
        )
        assert await r.reloader.reload() == "ok"
        assert pools.providers == (provider,)
        assert pools.breakers["gpt-realtime/0"] is breaker
        r.path.write_text(
            config(r.simulator.url).replace(
                "api_key_env: UPSTREAM_KEY", "api_key_env: OTHER_KEY"
            )
        )
        assert await r.reloader.reload() == "ok"
        assert pools.providers != (provider,)
        assert pools.breakers["gpt-realtime/0"] is not breaker
        assert await r.works(KEY_A)


async def test_a_tightened_policy_applies_to_new_sessions_only(tmp_path: Path) -> None:
    """A live session keeps the policy it started with; a new one gets the reloaded one."""
    async with (
        reloading(tmp_path, text=lambda url: policy_config(url, "near_field")) as r,
        connect_relay(r.url(), key=KEY_A) as live,
    ):
        assert noise_of(await receive_event(live)) == {"type": "near_field"}
        r.path.write_text(policy_config(r.simulator.url, "far_field"))
        assert await r.reloader.reload() == "ok"
        async with connect_relay(r.url(), key=KEY_A) as new:
            assert noise_of(await receive_event(new)) == {"type": "far_field"}
        # The live session's policy still forces near_field over the client's null.
        await live.send(
            '{"type": "session.update", "session": {"type": "realtime", '
            '"audio": {"input": {"noise_reduction": null}}}}'
        )
        updated = await receive_event(live)
        assert updated["type"] == "session.updated"
        assert noise_of(updated) == {"type": "near_field"}
        # The relay sent the live session nothing of its own.
        assert relay_updates(r.simulator) == []


async def test_a_new_jwt_verifier_replaces_the_old_one_which_is_closed(
    tmp_path: Path,
) -> None:
    """auth.jwt changed: new handshakes use a new verifier; the old one is closed (at once when the relay stops)."""
    jwt = (
        "auth: {{jwt: {{jwks_url: 'http://127.0.0.1:9/jwks', issuer: i, "
        "audience: {audience}}}}}"
    )
    async with reloading(
        tmp_path, text=lambda url: config(url, extra=jwt.format(audience="first"))
    ) as r:
        old = r.relay.app.verifier
        assert old is not None
        r.path.write_text(config(r.simulator.url, extra=jwt.format(audience="second")))
        assert await r.reloader.reload() == "ok"
        new = r.relay.app.verifier
        assert new is not None
        assert new is not old
        assert r.relay.app.gate.verifier is new
        # Handshakes begun before the swap may still hold it.
        assert closed(old) == (False,)
    assert closed(old, new) == (True, True)


async def test_the_file_is_parsed_off_the_event_loop(tmp_path: Path) -> None:
    """Parsing a large configuration must not hold the loop every session waits for."""
    threads: list[str] = []

    def adjust(settings: Settings) -> Settings:
        threads.append(threading.current_thread().name)
        return settings

    async with reloading(tmp_path, adjust=adjust) as r:
        r.path.write_text(
            config(
                r.simulator.url,
                clients=f'  - {{id: app-b, key_sha256: "{sha(KEY_B)}"}}',
            )
        )
        assert await r.reloader.reload() == "ok"
    assert threads
    assert threading.main_thread().name not in threads


ALL_SESSIONS = "reload: {policy_reload: all_sessions}"


def policy_config(url: str, kind: str, extra: str = "") -> str:
    """A file whose client app-a has a policy forcing noise reduction ``kind``."""
    policy = "policies: {p: {set: {input_audio_noise_reduction: {type: " + kind + "}}}}"
    return config(url, extra=f"{policy}\n{extra}").replace(
        f'key_sha256: "{sha(KEY_A)}"}}', f'key_sha256: "{sha(KEY_A)}", policy: p}}'
    )


def relay_updates(simulator: Simulator) -> list[dict[str, Any]]:
    """The relay's own mid-session updates the simulator received, oldest first."""
    return [
        event
        for event in simulator.stats.events_of_type("session.update")
        if str(event.get("event_id", "")).startswith("relay_policy_reload")
    ]


def noise_of(event: dict[str, Any]) -> object:
    """The GA noise reduction a session event states."""
    return event["session"]["audio"]["input"]["noise_reduction"]


async def test_all_sessions_switches_a_live_session_to_the_tightened_policy(
    tmp_path: Path,
) -> None:
    """policy_reload: all_sessions: the upstream gets the forced value mid-session; later client events meet the new policy."""
    async with (
        reloading(
            tmp_path, text=lambda url: policy_config(url, "near_field", ALL_SESSIONS)
        ) as r,
        connect_relay(r.url(), key=KEY_A) as live,
    ):
        assert noise_of(await receive_event(live)) == {"type": "near_field"}
        r.path.write_text(policy_config(r.simulator.url, "far_field", ALL_SESSIONS))
        with capture_logs() as logs:
            assert await r.reloader.reload() == "ok"
        # The upstream's answer to the relay's update reaches the client.
        updated = await receive_event(live)
        assert updated["type"] == "session.updated"
        assert noise_of(updated) == {"type": "far_field"}
        (update,) = relay_updates(r.simulator)
        assert update["event_id"] == "relay_policy_reload_1"
        assert noise_of(update) == {"type": "far_field"}
        # The client's next event is judged by the new policy.
        await live.send(
            '{"type": "session.update", "session": {"type": "realtime", '
            '"audio": {"input": {"noise_reduction": {"type": "near_field"}}}}}'
        )
        updated = await receive_event(live)
        assert updated["type"] == "session.updated"
        assert noise_of(updated) == {"type": "far_field"}
        (switched,) = [log for log in logs if log["event"] == "config.live_sessions"]
        assert switched["policy_switched"] == 1


async def test_a_removed_clients_session_is_closed_after_the_grace(
    tmp_path: Path,
) -> None:
    """removed_client_grace_seconds: an error event client_removed, then close 4003; other clients' sessions stay."""
    app_b = f'  - {{id: app-b, key_sha256: "{sha(KEY_B)}"}}'
    grace = "reload: {removed_client_grace_seconds: 0.2}"
    async with reloading(tmp_path) as r:
        r.path.write_text(config(r.simulator.url, clients=app_b, extra=grace))
        assert await r.reloader.reload() == "ok"
        async with (
            connect_relay(r.url(), key=KEY_B) as removed,
            connect_relay(r.url(), key=KEY_A) as kept,
        ):
            assert (await receive_event(removed))["type"] == "session.created"
            assert (await receive_event(kept))["type"] == "session.created"
            r.path.write_text(config(r.simulator.url, extra=grace))
            assert await r.reloader.reload() == "ok"
            notice = await receive_event(removed)
            assert notice["type"] == "error"
            assert notice["error"]["code"] == "client_removed"
            async with asyncio.timeout(5 * SECOND):
                await removed.wait_closed()
            assert removed.close_code == 4003
            # The kept client's session still relays.
            await kept.send(
                '{"type": "session.update", "session": {"type": "realtime"}}'
            )
            assert (await receive_event(kept))["type"] == "session.updated"
        # Every session ended and left the per-client index.
        async with asyncio.timeout(5 * SECOND):
            await r.relay.app.endpoint.wait_connections(0)
        assert r.relay.app.endpoint.by_client == {}


async def test_without_a_grace_a_removed_clients_session_goes_on(
    tmp_path: Path,
) -> None:
    """The default: a removed client's live session ends at its own pace."""
    app_b = f'  - {{id: app-b, key_sha256: "{sha(KEY_B)}"}}'
    async with reloading(tmp_path) as r:
        r.path.write_text(config(r.simulator.url, clients=app_b))
        assert await r.reloader.reload() == "ok"
        async with connect_relay(r.url(), key=KEY_B) as live:
            assert (await receive_event(live))["type"] == "session.created"
            r.path.write_text(config(r.simulator.url))
            assert await r.reloader.reload() == "ok"
            assert not await r.works(KEY_B)
            await live.send(
                '{"type": "session.update", "session": {"type": "realtime"}}'
            )
            assert (await receive_event(live))["type"] == "session.updated"
