"""plan_reload: what a new configuration changes, and which keys it may not change."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import replace
from typing import Any

import pytest

from relay.sansio.policy import Policy
from relay.sansio.reload import FIXED_KEYS, plan_reload
from relay.sansio.settings import (
    ClientLimits,
    ClientSettings,
    DeploymentSettings,
    DrainSettings,
    FailoverSettings,
    FlowSettings,
    JwtSettings,
    LimitsSettings,
    ListenSettings,
    LogSettings,
    MetricsSettings,
    ReloadSettings,
    Settings,
    TlsSettings,
)
from relay.typing import ClientId
from tests.helpers.servers import make_settings


OLD = make_settings("http://127.0.0.1:9")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def with_client(settings: Settings, client: ClientSettings) -> Settings:
    return replace(settings, clients=(*settings.clients, client))


def test_identical_settings_are_not_a_reload() -> None:
    """The same configuration (a comment edited, say) changes nothing and refuses nothing."""
    plan = plan_reload(OLD, make_settings("http://127.0.0.1:9"))
    assert plan.unchanged
    assert (plan.changed, plan.refused) == ((), ())


def test_a_new_client_is_a_change_of_clients() -> None:
    """A client added to the list is reported by id; nothing is refused."""
    new = with_client(OLD, ClientSettings(ClientId("app-c"), (digest("c"),)))
    plan = plan_reload(OLD, new)
    assert (plan.changed, plan.refused) == (("clients",), ())
    assert plan.clients_added == ("app-c",)
    assert plan.clients_removed == plan.clients_changed == ()


def test_key_rotation_policy_and_limits_change_a_client() -> None:
    """A client whose keys, policy or limits differ is a changed client."""
    first, second = OLD.clients
    new = replace(
        OLD,
        clients=(
            replace(first, key_sha256=(*first.key_sha256, digest("next"))),
            replace(
                second,
                policy=Policy(name="strict"),
                limits=ClientLimits(max_sessions=1),
            ),
        ),
    )
    plan = plan_reload(OLD, new)
    assert plan.changed == ("clients",)
    assert plan.clients_changed == ("app-a", "app-b")


def test_how_live_sessions_are_reached_is_itself_reloadable() -> None:
    """The reload section applies with the file that changes it."""
    new = replace(OLD, reload=ReloadSettings("all_sessions", 30.0))
    plan = plan_reload(OLD, new)
    assert plan.refused == ()
    assert plan.changed == (
        "reload.policy_reload",
        "reload.removed_client_grace_seconds",
    )


def test_removed_client_and_deployments() -> None:
    """Removed clients and added or removed deployments are reported by name."""
    deployments = dict(OLD.deployments)
    removed = next(iter(deployments))
    del deployments[removed]
    deployments["new-one"] = DeploymentSettings("new-one", "model")
    new = replace(OLD, clients=OLD.clients[:1], deployments=deployments)
    plan = plan_reload(OLD, new)
    assert plan.changed == ("deployments", "clients")
    assert plan.clients_removed == ("app-b",)
    assert plan.deployments_added == ("new-one",)
    assert plan.deployments_removed == (removed,)


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"failover": FailoverSettings(failures_to_open=5)}, "failover"),
        ({"limits": LimitsSettings(max_sessions=7)}, "limits.max_sessions"),
        ({"limits": LimitsSettings(policy_timeout=2)}, "limits.policy_timeout"),
        ({"limits": LimitsSettings(handshake_timeout=3)}, "limits.handshake_timeout"),
        (
            {"flow": replace(OLD.flow, buffer_bytes=2 * 1024 * 1024)},
            "flow.buffer_bytes",
        ),
        ({"flow": replace(OLD.flow, stall_timeout=3)}, "flow.stall_timeout"),
        ({"log": LogSettings(level="debug")}, "log.level"),
        (
            {
                "jwt": JwtSettings(
                    jwks_url="https://idp.example/jwks", issuer="i", audience="a"
                )
            },
            "auth.jwt",
        ),
    ],
)
def test_reloadable_keys(changes: dict[str, Any], path: str) -> None:
    """Each reloadable key is reported changed, and nothing is refused."""
    plan = plan_reload(OLD, replace(OLD, **changes))
    assert plan.changed == (path,)
    assert plan.refused == ()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"listen": ListenSettings(host="127.0.0.1", port=8081)},
            "listen.port: cannot change without a restart (0 -> 8081): "
            "the listener is bound at start-up",
        ),
        (
            {"listen": ListenSettings(host="0.0.0.0", port=0)},
            "listen.host: cannot change without a restart ('127.0.0.1' -> '0.0.0.0'): "
            "the listener is bound at start-up",
        ),
        (
            {"metrics": MetricsSettings(host="127.0.0.1", port=9999)},
            "metrics.port: cannot change without a restart (0 -> 9999): "
            "the listener is bound at start-up",
        ),
        (
            {"limits": LimitsSettings(max_message_bytes=1024 * 1024)},
            "limits.max_message_bytes: cannot change without a restart "
            "(16777216 -> 1048576): the server's protocols are set up at start-up",
        ),
        (
            {"drain": DrainSettings(grace_seconds=5)},
            "drain.grace_seconds: cannot change without a restart (600.0 -> 5): "
            "a drain in progress keeps the deadline it announced",
        ),
        (
            {"log": LogSettings(format="console")},
            "log.format: cannot change without a restart ('json' -> 'console'): "
            "one process writes one log format (log.level does reload)",
        ),
        (
            {"flow": FlowSettings(ping_interval=None, close_timeout=1.0)},
            "flow.ping_interval: cannot change without a restart (20.0 -> None): "
            "the server's protocols are set up at start-up",
        ),
    ],
)
def test_fixed_keys_are_refused_with_their_path(
    changes: dict[str, Any], message: str
) -> None:
    """A fixed key that changes is refused with its key path, old and new values, and why."""
    plan = plan_reload(OLD, replace(OLD, **changes))
    assert plan.refused == (message,)
    assert not plan.unchanged


def test_secrets_are_never_quoted_in_a_refusal() -> None:
    """A Redis URL (it may hold a password) and TLS paths are named, their values not."""
    new = replace(
        OLD,
        limits=LimitsSettings(backend="redis", redis_url="redis://:hunter2@redis:6379"),
        listen=replace(
            OLD.listen, tls=TlsSettings(cert_file="c.pem", key_file="k.pem")
        ),
    )
    plan = plan_reload(OLD, new)
    assert [message.split(":")[0] for message in plan.refused] == [
        "listen.tls",
        "limits.backend",
        "limits.redis_url",
    ]
    assert not any("hunter2" in message for message in plan.refused)
    assert not any("c.pem" in message for message in plan.refused)


def test_a_refusal_comes_with_the_changes_it_blocks() -> None:
    """Reloadable changes beside a refused key are still reported (the whole file is refused)."""
    new = with_client(
        replace(OLD, listen=ListenSettings(host="127.0.0.1", port=1)),
        ClientSettings(ClientId("app-c"), (digest("c"),)),
    )
    plan = plan_reload(OLD, new)
    assert plan.changed == ("clients",)
    assert len(plan.refused) == 1


def test_every_fixed_key_is_a_settings_path() -> None:
    """FIXED_KEYS names real sections and fields (a typo would never be refused)."""
    for path in FIXED_KEYS:
        section, name = path.split(".")
        assert name in type(getattr(OLD, section)).__dataclass_fields__


def test_every_setting_is_either_fixed_or_reloadable() -> None:
    """A field added to Settings later must be classified here, not swapped unnoticed."""
    from relay.sansio import reload

    reloadable = {path for path, _ in reload._RELOADABLE}
    classified = set(FIXED_KEYS) | reloadable
    # Whole sections compared as one; the file name is not a setting.
    whole = {"upstream", "deployments", "clients", "failover"}
    missing = []
    for field in dataclasses.fields(Settings):
        if field.name == "source" or field.name in whole:
            continue
        if field.name == "jwt":
            assert "auth.jwt" in reloadable
            continue
        for sub in dataclasses.fields(type(getattr(OLD, field.name))):
            path = f"{field.name}.{sub.name}"
            if path not in classified and not any(
                key.startswith(path + ".") for key in classified
            ):
                missing.append(path)
    assert missing == []
