"""Handshake rules: credentials, routes, query validation, subprotocols, headers."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from types import MappingProxyType

import pytest
from hypothesis import given, strategies as st

from relay.config import ClientSettings, DeploymentSettings
from relay.exceptions import BadRequest, Forbidden, NotFound, Unauthenticated
from relay.sansio.handshake import (
    Gatekeeper,
    HandshakeRequest,
    family_for_api_version,
    redact_query,
    select_subprotocol,
    upstream_headers,
    upstream_target,
)
from relay.typing import ClientId


KEY_A = "key-of-app-a"
KEY_A2 = "rotated-key-of-app-a"
KEY_B = "key-of-app-b"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


GATE = Gatekeeper(
    (
        ClientSettings(ClientId("app-a"), (_digest(KEY_A), _digest(KEY_A2))),
        ClientSettings(ClientId("app-b"), (_digest(KEY_B),)),
    ),
    MappingProxyType(
        {
            "gpt-4o-realtime-preview": DeploymentSettings(
                "gpt-4o-realtime-preview", "gpt-4o-realtime-preview"
            ),
            "gpt-realtime": DeploymentSettings("gpt-realtime", "gpt-realtime-prod"),
        }
    ),
)
PREVIEW_QUERY = b"api-version=2025-04-01-preview&deployment=gpt-4o-realtime-preview"


def request(
    path: str = "/openai/realtime",
    query: bytes = PREVIEW_QUERY,
    headers: Sequence[tuple[str, str]] = (("api-key", KEY_A),),
    subprotocols: Sequence[str] = (),
) -> HandshakeRequest:
    return HandshakeRequest(
        path=path, query=query, headers=headers, subprotocols=subprotocols
    )


class TestCredentials:
    @pytest.mark.parametrize(
        ("req", "source"),
        [
            (request(headers=[("api-key", KEY_A)]), "api-key-header"),
            (request(headers=[("authorization", f"Bearer {KEY_A}")]), "bearer"),
            (request(headers=[("authorization", f"bearer   {KEY_A}  ")]), "bearer"),
            (
                request(
                    headers=[],
                    subprotocols=["realtime", f"openai-insecure-api-key.{KEY_A}"],
                ),
                "subprotocol",
            ),
            (
                request(headers=[], query=PREVIEW_QUERY + f"&api-key={KEY_A}".encode()),
                "query",
            ),
            (
                request(
                    headers=[],
                    query=PREVIEW_QUERY + f"&Authorization=Bearer%20{KEY_A}".encode(),
                ),
                "query",
            ),
        ],
    )
    def test_every_documented_place_is_accepted(
        self, req: HandshakeRequest, source: str
    ) -> None:
        """Header, bearer, subprotocol and query credentials all identify the client."""
        admission = GATE.admit(req)
        assert admission.client_id == "app-a"
        assert admission.credential_source == source

    def test_rotated_keys_identify_the_same_client(self) -> None:
        """Every key of a client works, so keys can rotate without downtime."""
        assert GATE.admit(request(headers=[("api-key", KEY_A2)])).client_id == "app-a"
        assert GATE.admit(request(headers=[("api-key", KEY_B)])).client_id == "app-b"

    @pytest.mark.parametrize(
        "headers",
        [
            [],
            [("api-key", "wrong")],
            [("api-key", "")],
            [("api-key", "   ")],
            [("authorization", "Basic abc")],
            [("authorization", "Bearer")],
            [("authorization", "Bearer ")],
            [("authorization", KEY_A)],
            [("api-key", KEY_A), ("api-key", KEY_B)],
            [
                ("authorization", f"Bearer {KEY_A}"),
                ("authorization", f"Bearer {KEY_A}"),
            ],
        ],
    )
    def test_missing_wrong_or_malformed_credentials_are_401(
        self, headers: list[tuple[str, str]]
    ) -> None:
        """Anything but exactly one valid credential is refused."""
        with pytest.raises(Unauthenticated):
            GATE.admit(request(headers=headers))

    def test_header_takes_precedence_over_weaker_places(self) -> None:
        """Only the first credential present by precedence is considered."""
        with pytest.raises(Unauthenticated):
            GATE.admit(
                request(
                    headers=[("api-key", "wrong")],
                    subprotocols=[f"openai-insecure-api-key.{KEY_A}"],
                )
            )

    def test_a_query_searched_for_a_key_must_be_ascii(self) -> None:
        """Without a header or subprotocol credential, a non-ASCII query is a 400, not a 401."""
        with pytest.raises(BadRequest, match="not ASCII"):
            GATE.admit(request(headers=[], query=PREVIEW_QUERY + b"&api-key=\xff"))

    def test_auth_comes_before_routing_details(self) -> None:
        """An unauthenticated caller cannot probe deployments or parameters."""
        with pytest.raises(Unauthenticated):
            GATE.admit(request(headers=[], query=b"deployment=unknown"))

    @given(st.text(max_size=200))
    def test_arbitrary_keys_never_crash(self, key: str) -> None:
        """Any header value is either admitted or refused with 401."""
        with contextlib.suppress(Unauthenticated):
            GATE.admit(request(headers=[("api-key", key)]))


class TestRoutes:
    def test_preview_path_maps_the_deployment(self) -> None:
        """The upstream target keeps the client's api-version and names the deployment."""
        admission = GATE.admit(request())
        assert admission.route.family == "preview"
        assert upstream_target(admission.route, "gpt-4o-realtime-preview") == (
            "/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-4o-realtime-preview"
        )

    @pytest.mark.parametrize("path", ["/openai/v1/realtime", "/v1/realtime"])
    def test_ga_paths_map_the_model(self, path: str) -> None:
        """GA requests go to the GA path upstream with the upstream deployment as model."""
        admission = GATE.admit(request(path=path, query=b"model=gpt-realtime"))
        assert admission.route.family == "ga"
        assert admission.deployment.upstream_deployment == "gpt-realtime-prod"
        assert (
            upstream_target(admission.route, "gpt-realtime-prod")
            == "/openai/v1/realtime?model=gpt-realtime-prod"
        )

    def test_ga_api_version_on_the_preview_path(self) -> None:
        """A non-preview api-version on /openai/realtime is the GA family (SDK GA client)."""
        admission = GATE.admit(
            request(query=b"api-version=2025-08-28&deployment=gpt-realtime")
        )
        assert admission.route.family == "ga"
        assert upstream_target(admission.route, "gpt-realtime-prod") == (
            "/openai/realtime?api-version=2025-08-28&deployment=gpt-realtime-prod"
        )

    @pytest.mark.parametrize(
        ("path", "query"),
        [
            ("/openai/realtime", b"deployment=gpt-realtime"),
            ("/openai/realtime", b"api-version=&deployment=gpt-realtime"),
            ("/openai/realtime", b"api-version=2025-04-01-preview"),
            (
                "/openai/realtime",
                b"api-version=2025-04-01-preview&deployment=gpt-realtime&deployment=x",
            ),
            ("/openai/realtime", b"api-version=../../x&deployment=gpt-realtime"),
            ("/openai/realtime", b"api-version=a%26b%3Dc&deployment=gpt-realtime"),
            ("/openai/v1/realtime", b""),
            ("/openai/v1/realtime", b"model=gpt-realtime&call_id=rtc_1"),
            ("/openai/v1/realtime", b"model=\xff"),
        ],
    )
    def test_malformed_queries_are_400(self, path: str, query: bytes) -> None:
        """Missing, repeated, empty or oddly shaped parameters are refused."""
        with pytest.raises(BadRequest):
            GATE.admit(request(path=path, query=query))

    def test_unknown_deployment_is_404(self) -> None:
        """Only configured deployments are served."""
        with pytest.raises(NotFound):
            GATE.admit(
                request(query=b"api-version=2025-04-01-preview&deployment=other")
            )

    @pytest.mark.parametrize(
        "path",
        ["/", "/openai/realtime/", "/openai/deployments/x/realtime", "/v2/realtime"],
    )
    def test_unknown_path_is_404(self, path: str) -> None:
        """Only the realtime paths exist."""
        with pytest.raises(NotFound):
            GATE.admit(request(path=path))

    @given(st.binary(max_size=200))
    def test_arbitrary_queries_never_crash(self, query: bytes) -> None:
        """Any query is admitted or refused with a client error, never a crash."""
        with contextlib.suppress(BadRequest, NotFound, Unauthenticated):
            GATE.admit(request(query=query))


@pytest.mark.parametrize(
    ("version", "family"),
    [
        ("2024-10-01-preview", "preview"),
        ("2025-04-01-preview", "preview"),
        ("2025-08-28", "ga"),
    ],
)
def test_family_for_api_version(version: str, family: str) -> None:
    """Preview versions speak preview events; others GA (UNVERIFIED, see docstring)."""
    assert family_for_api_version(version) == family


@pytest.mark.parametrize(
    ("offered", "selected"),
    [
        ([], None),
        (["realtime"], "realtime"),
        (
            ["openai-insecure-api-key.k", "realtime", "openai-beta.realtime-v1"],
            "realtime",
        ),
        (["openai-beta.realtime-v1"], "openai-beta.realtime-v1"),
        (["openai-insecure-api-key.k"], None),
        (["chat"], None),
    ],
)
def test_subprotocol_selection_never_echoes_a_key(
    offered: list[str], selected: str | None
) -> None:
    """`realtime` is preferred; a key-bearing entry is never selected."""
    assert select_subprotocol(offered) == selected


class TestRedaction:
    def test_credentials_are_redacted(self) -> None:
        """api-key and Authorization values never survive into loggable text."""
        redacted = redact_query(
            b"api-version=v&api-key=sekrit&Authorization=Bearer%20tok&deployment=d"
        )
        assert b"sekrit" not in redacted
        assert b"tok" not in redacted
        assert b"api-version=v" in redacted
        assert b"deployment=d" in redacted

    def test_queries_without_credentials_are_unchanged(self) -> None:
        """Nothing is rewritten when nothing needs hiding."""
        assert redact_query(PREVIEW_QUERY) == PREVIEW_QUERY
        assert redact_query(b"") == b""

    @given(
        st.binary(max_size=100),
        st.text(alphabet="abcdefghijklmnop0123456789", min_size=12, max_size=20),
    )
    def test_any_query_with_a_key_is_redacted(self, prefix: bytes, secret: str) -> None:
        """Whatever surrounds it, a key in the query never comes out."""
        query = prefix + b"&api-key=" + secret.encode()
        assert secret.encode() not in redact_query(query)


def test_upstream_headers_are_an_allow_list() -> None:
    """Exactly the relay's auth, a request id and its user agent go upstream."""
    headers = upstream_headers(
        ("api-key", "relay-key"), request_id="rid", user_agent="realtime-relay/x"
    )
    assert [name for name, _ in headers] == [
        "api-key",
        "x-ms-client-request-id",
        "user-agent",
    ]


def _client(**changes: object) -> ClientSettings:
    from dataclasses import replace

    return replace(ClientSettings(ClientId("app-c"), (_digest("key-c"),)), **changes)  # type: ignore[arg-type]


def _gate(client: ClientSettings) -> Gatekeeper:
    return Gatekeeper((client,), GATE._deployments)


class TestClientRestrictions:
    def test_origin_is_refused_unless_listed(self) -> None:
        """Server-to-server callers send no Origin; any Origin not listed is 403."""
        gate = _gate(_client(allowed_origins=frozenset({"https://app.example.com"})))
        headers = [("api-key", "key-c")]
        assert gate.admit(request(headers=headers)).client_id == "app-c"
        assert (
            gate.admit(
                request(headers=[*headers, ("origin", "HTTPS://APP.example.com")])
            ).client_id
            == "app-c"
        )
        for origin in (
            "https://evil.example.com",
            "https://app.example.com.evil.com",
            "null",
            "",
        ):
            with pytest.raises(Forbidden) as info:
                gate.admit(request(headers=[*headers, ("origin", origin)]))
            assert info.value.reason == "origin"
        with pytest.raises(Forbidden):
            gate.admit(
                request(
                    headers=[
                        *headers,
                        ("origin", "https://app.example.com"),
                        ("origin", "https://app.example.com"),
                    ]
                )
            )

    def test_any_origin_is_refused_by_default(self) -> None:
        """An empty allow-list refuses every browser."""
        with pytest.raises(Forbidden):
            _gate(_client()).admit(
                request(headers=[("api-key", "key-c"), ("origin", "http://localhost")])
            )

    def test_query_credentials_can_be_turned_off(self) -> None:
        """allow_query_auth: false refuses the key in the query string, not in a header."""
        gate = _gate(_client(allow_query_auth=False))
        with pytest.raises(Unauthenticated) as info:
            gate.admit(request(headers=[], query=PREVIEW_QUERY + b"&api-key=key-c"))
        assert info.value.reason == "query_auth_disabled"
        assert gate.admit(request(headers=[("api-key", "key-c")])).client_id == "app-c"

    def test_deployments_per_client(self) -> None:
        """A client restricted to some deployments gets 403 for the others."""
        gate = _gate(_client(deployments=frozenset({"gpt-realtime"})))
        with pytest.raises(Forbidden) as info:
            gate.admit(request(headers=[("api-key", "key-c")]))
        assert info.value.reason == "deployment"
        admission = gate.admit(
            request(
                path="/openai/v1/realtime",
                query=b"model=gpt-realtime",
                headers=[("api-key", "key-c")],
            )
        )
        assert admission.deployment.name == "gpt-realtime"

    def test_identification_for_jwt_clients(self) -> None:
        """The edge names a JWT's client; the same rules apply to it."""
        client = _client(key_sha256=())
        gate = _gate(client)
        credential = gate.credential(
            request(headers=[("authorization", "Bearer a.b.c")])
        )
        assert credential.source == "bearer"
        assert "a.b.c" not in repr(credential)
        assert gate.identify(credential) is None
        assert gate.client_by_id("app-c") is client
        assert gate.client_by_id("nobody") is None
        assert (
            gate.admit(
                request(headers=[("authorization", "Bearer a.b.c")]), client, credential
            ).client_id
            == "app-c"
        )

    @pytest.mark.parametrize(
        ("headers", "reason"),
        [
            ([], "missing"),
            ([("authorization", "Basic x")], "malformed"),
            ([("api-key", "")], "malformed"),
            ([("api-key", "nope")], "invalid"),
        ],
    )
    def test_failure_reasons_are_bounded_labels(
        self, headers: list[tuple[str, str]], reason: str
    ) -> None:
        """Each refusal carries a reason fit for a metric label."""
        with pytest.raises(Unauthenticated) as info:
            GATE.admit(request(headers=headers))
        assert info.value.reason == reason


class TestUpstreamProtocol:
    """A deployment's upstream_protocol decides the upstream route and the bridge."""

    LEGACY = Gatekeeper(
        (ClientSettings(ClientId("app-a"), (_digest(KEY_A),)),),
        MappingProxyType(
            {
                "gpt-4o-realtime-preview": DeploymentSettings(
                    "gpt-4o-realtime-preview",
                    "gpt-4o-realtime-preview",
                    upstream_protocol="preview",
                ),
                "gpt-realtime": DeploymentSettings(
                    "gpt-realtime", "gpt-realtime-prod", upstream_protocol="preview"
                ),
            }
        ),
    )

    @pytest.mark.parametrize(
        ("path", "query", "target", "bridged"),
        [
            (
                "/openai/realtime",
                PREVIEW_QUERY,
                "/openai/v1/realtime?model=gpt-realtime-prod",
                True,
            ),
            (
                "/openai/realtime",
                b"api-version=2025-08-28&deployment=gpt-4o-realtime-preview",
                "/openai/v1/realtime?model=gpt-realtime-prod",
                False,
            ),
            (
                "/openai/v1/realtime",
                b"model=gpt-realtime",
                "/openai/v1/realtime?model=gpt-realtime-prod",
                False,
            ),
        ],
    )
    def test_a_ga_upstream_gets_every_session_on_its_endpoint(
        self, path: str, query: bytes, target: str, bridged: bool
    ) -> None:
        admission = GATE.admit(request(path=path, query=query))
        assert admission.deployment.upstream_protocol == "ga"  # the default
        route = admission.upstream_route
        assert (route.family, route.api_version) == ("ga", None)
        assert upstream_target(route, "gpt-realtime-prod") == target
        assert admission.bridged is bridged

    @pytest.mark.parametrize(
        ("query", "family"),
        [
            (PREVIEW_QUERY, "preview"),
            (b"api-version=2025-08-28&deployment=gpt-4o-realtime-preview", "ga"),
        ],
    )
    def test_a_preview_upstream_gets_the_clients_own_route(
        self, query: bytes, family: str
    ) -> None:
        admission = self.LEGACY.admit(request(query=query))
        assert admission.upstream_route is admission.route
        assert admission.route.family == family
        assert admission.bridged is False
