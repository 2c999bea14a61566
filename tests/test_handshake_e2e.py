"""Handshakes through a real relay: refusals before upgrade, and what reaches the upstream."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from relay.config import LimitsSettings
from relay.simulator.wire import Family
from tests.helpers.clients import connect_relay, receive_event
from tests.helpers.servers import (
    CLIENT_KEY,
    DEPLOYMENT,
    GA_DEPLOYMENT,
    GA_UPSTREAM_DEPLOYMENT,
    GA_VERSION,
    LEGACY_DEPLOYMENT,
    PREVIEW_VERSION,
    UPSTREAM_KEY,
    relay_stack,
)
from tests.helpers.timing import SECOND


def _status(info: pytest.ExceptionInfo[InvalidStatus]) -> tuple[int, dict[str, object]]:
    response = info.value.response
    return response.status_code, json.loads(response.body or b"{}")


class TestClientAuthentication:
    @pytest.mark.parametrize("key", [None, "wrong-key", ""])
    async def test_missing_or_wrong_key_is_401_and_never_reaches_upstream(
        self, key: str | None
    ) -> None:
        """401 with a JSON body before any upstream connection exists."""
        async with relay_stack() as stack:
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(stack.preview_url(), key=key):
                    pass
            status, body = _status(info)
            assert status == 401
            assert body["error"]["code"] == "unauthorized"  # type: ignore[index]
            assert info.value.response.headers["WWW-Authenticate"].startswith("Bearer")
            assert info.value.response.headers["Content-Type"] == "application/json"
            assert stack.simulator.stats.handshakes == []

    async def test_malformed_authorization_is_401(self) -> None:
        """A non-Bearer Authorization header is refused, not guessed at."""
        async with relay_stack() as stack:
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(
                    stack.preview_url(),
                    key=None,
                    headers=[("Authorization", "Basic Zm9vOmJhcg==")],
                ):
                    pass
            assert _status(info)[0] == 401
            assert stack.simulator.stats.handshakes == []

    @pytest.mark.parametrize(
        "place",
        ["bearer", "subprotocol", "query"],
    )
    async def test_other_credential_places_are_accepted(self, place: str) -> None:
        """Bearer, the browser subprotocol and the query string authenticate too."""
        async with relay_stack() as stack:
            url = stack.preview_url()
            headers: list[tuple[str, str]] = []
            subprotocols = None
            if place == "bearer":
                headers = [("Authorization", f"Bearer {CLIENT_KEY}")]
            elif place == "subprotocol":
                subprotocols = ["realtime", f"openai-insecure-api-key.{CLIENT_KEY}"]
            else:
                url += f"&api-key={CLIENT_KEY}"
            async with connect_relay(
                url, key=None, headers=headers, subprotocols=subprotocols
            ) as ws:
                assert (await receive_event(ws))["type"] == "session.created"
                if place == "subprotocol":
                    # The key-bearing entry is never echoed back.
                    assert ws.subprotocol == "realtime"

    async def test_query_credentials_never_reach_the_logs(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """uvicorn logs the path with its query: the key is redacted first."""
        caplog.set_level(logging.DEBUG)
        async with relay_stack() as stack:
            async with connect_relay(
                stack.preview_url() + f"&api-key={CLIENT_KEY}", key=None
            ) as ws:
                await receive_event(ws)
            with pytest.raises(InvalidStatus):
                async with connect_relay(
                    stack.preview_url() + "&api-key=wrong-secret-123", key=None
                ):
                    pass
        # Records of the relay's side only: the test's own client and the simulator
        # log their traffic too.
        logged = "\n".join(
            record.getMessage()
            for record in caplog.records
            if record.name.startswith(("relay.", "uvicorn"))
            and not record.name.startswith("relay.simulator")
        )
        assert "without completing handshake" not in logged
        assert "WebSocket /openai/realtime" in logged  # uvicorn did log the path
        assert CLIENT_KEY not in logged
        assert "wrong-secret-123" not in logged
        assert UPSTREAM_KEY not in logged


class TestRouting:
    async def test_unknown_deployment_is_404(self) -> None:
        """Deployments not in the configuration are refused with a JSON 404."""
        async with relay_stack() as stack:
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(stack.preview_url(deployment="nope")):
                    pass
            status, body = _status(info)
            assert status == 404
            assert "nope" in body["error"]["message"]  # type: ignore[index]
            assert stack.simulator.stats.handshakes == []

    async def test_a_retired_preview_upstream_is_400_with_azures_words(self) -> None:
        """A deployment still set to the preview protocol on a GA-only resource (simulate --families ga): the client gets Azure's 400 before upgrade; GA goes on."""
        async with relay_stack(simulator_options={"families": [Family.GA]}) as stack:
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(stack.preview_url(LEGACY_DEPLOYMENT)):
                    pass
            status, body = _status(info)
            assert status == 400
            assert "API version not supported" in json.dumps(body)
            async with connect_relay(stack.ga_url()) as ws:
                created = await receive_event(ws)
                assert created["type"] == "session.created"
            await stack.settle()

    @pytest.mark.parametrize(
        ("deployment", "version", "path", "query"),
        [
            (DEPLOYMENT, PREVIEW_VERSION, "/openai/v1/realtime", {"model": DEPLOYMENT}),
            (DEPLOYMENT, GA_VERSION, "/openai/v1/realtime", {"model": DEPLOYMENT}),
            (
                LEGACY_DEPLOYMENT,
                PREVIEW_VERSION,
                "/openai/realtime",
                {"api-version": PREVIEW_VERSION, "deployment": DEPLOYMENT},
            ),
            (
                LEGACY_DEPLOYMENT,
                GA_VERSION,
                "/openai/realtime",
                {"api-version": GA_VERSION, "deployment": DEPLOYMENT},
            ),
        ],
    )
    async def test_the_upstream_protocol_decides_the_upstream_endpoint(
        self, deployment: str, version: str, path: str, query: dict[str, str]
    ) -> None:
        """upstream_protocol ga (the default) sends every session to GA's endpoint; preview keeps the client's."""
        async with relay_stack() as stack:
            async with connect_relay(stack.preview_url(deployment, version)) as ws:
                created = await receive_event(ws)
                assert created["type"] == "session.created"
                # A preview client sees a preview session either way.
                assert ("type" in created["session"]) is (version == GA_VERSION)
            [handshake] = stack.simulator.stats.handshakes
            assert (handshake.path, handshake.query) == (path, query)
            await stack.settle()

    async def test_missing_api_version_is_400(self) -> None:
        """The preview path needs an api-version."""
        async with relay_stack() as stack:
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(
                    f"{stack.ws}/openai/realtime?deployment={DEPLOYMENT}"
                ):
                    pass
            assert _status(info)[0] == 400
            assert stack.simulator.stats.handshakes == []

    async def test_unknown_websocket_path_is_404(self) -> None:
        """Any other WebSocket path is a JSON 404, not a bare 403."""
        async with relay_stack() as stack:
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(f"{stack.ws}/somewhere/else"):
                    pass
            assert _status(info)[0] == 404

    @pytest.mark.parametrize(
        "path",
        [
            "/openai%2Fv1%2Frealtime",
            "/%6Fpenai/v1/realtime",
            "/openai/v1/realtim%65",
            "/openai/%72ealtime",
        ],
    )
    async def test_percent_encoded_aliases_are_404(self, path: str) -> None:
        """A realtime path is matched as sent: an encoded alias is another path."""
        async with relay_stack() as stack:
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(
                    f"{stack.ws}{path}?model={GA_DEPLOYMENT}&api-version=2025-04-01-preview&deployment={DEPLOYMENT}"
                ):
                    pass
            assert _status(info)[0] == 404
            assert stack.simulator.stats.handshakes == []

    async def test_plain_http_on_a_realtime_path_is_426(self) -> None:
        """An HTTP GET without upgrade is told to upgrade."""
        async with relay_stack() as stack, httpx.AsyncClient() as http:
            response = await http.get(
                f"http://127.0.0.1:{stack.relay.port}/openai/realtime"
            )
            assert response.status_code == 426
            assert response.json()["error"]["code"] == "upgrade_required"

    async def test_ga_path_maps_the_deployment(self) -> None:
        """`model` is mapped to its upstream deployment on the GA path."""
        async with relay_stack() as stack:
            async with connect_relay(stack.ga_url()) as ws:
                assert (await receive_event(ws))["type"] == "session.created"
            [handshake] = stack.simulator.stats.handshakes
            assert handshake.path == "/openai/v1/realtime"
            assert handshake.query == {"model": GA_UPSTREAM_DEPLOYMENT}


class TestWhatReachesTheUpstream:
    async def test_upstream_sees_only_the_relays_credentials_and_allowed_headers(
        self,
    ) -> None:
        """No client credential, cookie or custom header is forwarded; the relay's key is."""
        async with relay_stack() as stack:
            headers = [
                ("Authorization", "Bearer client-bearer-should-not-pass"),
                ("Cookie", "session=cookie-should-not-pass"),
                ("X-Custom", "custom-should-not-pass"),
                ("OpenAI-Beta", "realtime=v1"),
                ("x-ms-client-request-id", "client-request-id-should-not-pass"),
            ]
            url = stack.preview_url() + "&extra=extra-should-not-pass"
            async with connect_relay(
                url, headers=headers, subprotocols=["realtime"]
            ) as ws:
                await receive_event(ws)
            [handshake] = stack.simulator.stats.handshakes
            names = {name.lower() for name, _ in handshake.headers}
            assert names == {
                "host",
                "upgrade",
                "connection",
                "sec-websocket-key",
                "sec-websocket-version",
                "api-key",
                "x-ms-client-request-id",
                "user-agent",
            }
            values = dict((name.lower(), value) for name, value in handshake.headers)
            assert values["api-key"] == UPSTREAM_KEY
            assert values["user-agent"].startswith("realtime-relay/")
            everything = repr(handshake)
            assert CLIENT_KEY not in everything
            assert "should-not-pass" not in everything
            # A GA upstream (the default): the GA endpoint, no api-version.
            assert handshake.query == {"model": DEPLOYMENT}

    async def test_permessage_deflate_is_not_negotiated(self) -> None:
        """Compression is off on the client leg even when the client offers it."""
        async with (
            relay_stack() as stack,
            connect_relay(stack.preview_url(), compression="deflate") as ws,
        ):
            await receive_event(ws)
            assert ws.response is not None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers


class TestMessageLimit:
    async def test_frame_over_the_limit_is_closed_with_1009(self) -> None:
        """A client message over limits.max_message_bytes ends the session with 1009."""
        async with relay_stack(
            limits=LimitsSettings(max_message_bytes=64 * 1024)
        ) as stack:
            async with connect_relay(stack.preview_url()) as ws:
                await receive_event(ws)
                await ws.send("x" * (64 * 1024 + 1))
                async with asyncio.timeout(5 * SECOND):
                    await ws.wait_closed()
                assert ws.close_code == 1009
            await stack.settle()
