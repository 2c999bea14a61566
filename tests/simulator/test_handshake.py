"""Pure handshake rules: paths, api-version, credentials, deployments, family."""

from __future__ import annotations

import json

import pytest

from relay.simulator.handshake import Accept, AccessPolicy, Reject, decide, split_target
from relay.simulator.wire import Family


POLICY = AccessPolicy(api_keys=frozenset({"key"}), bearer_tokens=frozenset({"token"}))
PREVIEW = "/openai/realtime"
GA = "/openai/v1/realtime"
PREVIEW_QUERY = {"api-version": "2025-04-01-preview", "deployment": "dep"}
KEY = {"api-key": "key"}


def rejected(result: Accept | Reject) -> tuple[int, str]:
    assert isinstance(result, Reject), result
    return result.status, result.code


def test_split_target() -> None:
    """Path and query are split; the first value of a repeated key wins."""
    assert split_target("/openai/realtime?a=1&b=&a=2") == (
        "/openai/realtime",
        {"a": "1", "b": ""},
    )
    assert split_target("/x") == ("/x", {})


@pytest.mark.parametrize(
    ("path", "query", "family"),
    [
        (PREVIEW, PREVIEW_QUERY, Family.PREVIEW),
        (
            PREVIEW,
            {"api-version": "2024-10-01-preview", "deployment": "dep"},
            Family.PREVIEW,
        ),
        (PREVIEW, {"api-version": "2025-08-28", "deployment": "dep"}, Family.GA),
        (GA, {"model": "dep"}, Family.GA),
    ],
)
def test_accepted_requests_select_the_family(
    path: str, query: dict[str, str], family: Family
) -> None:
    """-preview api-versions speak preview; other versions and /v1 speak GA."""
    assert decide(path, query, KEY, POLICY) == Accept(family, "dep")


GA_ONLY = AccessPolicy(api_keys=frozenset({"key"}), families=frozenset({Family.GA}))


@pytest.mark.parametrize(
    "version", ["2025-04-01-preview", "2024-10-01-preview", "2099-01-01-preview"]
)
def test_a_ga_only_resource_refuses_preview_versions_as_retired(version: str) -> None:
    """400 BadRequest "API version not supported", Azure's answer to a version it no longer serves."""
    result = decide(
        PREVIEW, {"api-version": version, "deployment": "dep"}, KEY, GA_ONLY
    )
    assert rejected(result) == (400, "BadRequest")
    assert isinstance(result, Reject)
    assert json.loads(result.body())["error"]["message"] == "API version not supported"


def test_a_ga_only_resource_still_serves_ga() -> None:
    """The v1 path, and a GA api-version on the old path, speak GA as before."""
    assert decide(GA, {"model": "dep"}, KEY, GA_ONLY) == Accept(Family.GA, "dep")
    assert decide(
        PREVIEW, {"api-version": "2025-08-28", "deployment": "dep"}, KEY, GA_ONLY
    ) == Accept(Family.GA, "dep")


def test_credentials_are_checked_before_the_version_is_judged() -> None:
    """A wrong key on a retired version is 401, as on any other request."""
    assert rejected(decide(PREVIEW, PREVIEW_QUERY, {"api-key": "wrong"}, GA_ONLY)) == (
        401,
        "401",
    )


def test_unknown_path_is_404() -> None:
    """Only the two realtime paths exist."""
    assert rejected(decide("/openai/realtime/", PREVIEW_QUERY, KEY, POLICY)) == (
        404,
        "404",
    )
    assert rejected(decide("/v1/realtime", {"model": "dep"}, KEY, POLICY)) == (
        404,
        "404",
    )


def test_preview_query_rules() -> None:
    """Missing api-version 400, malformed 404, missing deployment 404 DeploymentNotFound."""
    assert rejected(decide(PREVIEW, {"deployment": "dep"}, KEY, POLICY)) == (
        400,
        "MissingApiVersionParameter",
    )
    assert rejected(
        decide(PREVIEW, {"api-version": "alpha", "deployment": "dep"}, KEY, POLICY)
    ) == (404, "404")
    assert rejected(
        decide(PREVIEW, {"api-version": "2025-04-01-preview"}, KEY, POLICY)
    ) == (404, "DeploymentNotFound")


def test_ga_query_rules() -> None:
    """api-version on /v1 is 401 (AZ-MIG); model is required."""
    assert rejected(
        decide(GA, {"model": "dep", "api-version": "2025-08-28"}, KEY, POLICY)
    ) == (401, "401")
    assert rejected(decide(GA, {}, KEY, POLICY)) == (400, "BadRequest")


def test_unknown_deployment_when_deployments_are_listed() -> None:
    """With a deployment list, other names are DeploymentNotFound."""
    policy = AccessPolicy(api_keys=frozenset({"key"}), deployments=frozenset({"dep"}))
    assert decide(GA, {"model": "dep"}, KEY, policy) == Accept(Family.GA, "dep")
    assert rejected(decide(GA, {"model": "other"}, KEY, policy)) == (
        404,
        "DeploymentNotFound",
    )
    assert rejected(
        decide(PREVIEW, {**PREVIEW_QUERY, "deployment": "other"}, KEY, policy)
    ) == (404, "DeploymentNotFound")


@pytest.mark.parametrize(
    ("path", "headers", "query", "ok"),
    [
        (PREVIEW, {"api-key": "key"}, {}, True),
        (PREVIEW, {"api-key": "nope"}, {}, False),
        (PREVIEW, {"api-key": ""}, {}, False),
        (PREVIEW, {}, {"api-key": "key"}, True),
        (PREVIEW, {"authorization": "Bearer token"}, {}, True),
        (PREVIEW, {"authorization": "bearer token"}, {}, True),
        (PREVIEW, {}, {"Authorization": "Bearer token"}, True),
        (PREVIEW, {"authorization": "Bearer key"}, {}, False),
        (GA, {"authorization": "Bearer key"}, {}, True),
        (GA, {"authorization": "Bearer nope"}, {}, False),
        (GA, {"authorization": "Basic token"}, {}, False),
        (GA, {"authorization": "Bearer"}, {}, False),
        (PREVIEW, {"api-key": "nope", "authorization": "Bearer token"}, {}, False),
        (PREVIEW, {}, {}, False),
    ],
)
def test_credentials(
    path: str, headers: dict[str, str], query: dict[str, str], ok: bool
) -> None:
    """api-key (header or query) or Bearer; a key is a Bearer token on the GA path only."""
    base = PREVIEW_QUERY if path == PREVIEW else {"model": "dep"}
    result = decide(path, {**base, **query}, headers, POLICY)
    if ok:
        assert isinstance(result, Accept)
    else:
        assert rejected(result) == (401, "401")


def test_401_messages_say_what_is_wrong() -> None:
    """Missing, invalid key and invalid token have Azure's distinct messages."""
    missing = decide(PREVIEW, PREVIEW_QUERY, {}, POLICY)
    bad_key = decide(PREVIEW, PREVIEW_QUERY, {"api-key": "x"}, POLICY)
    bad_token = decide(PREVIEW, PREVIEW_QUERY, {"authorization": "Bearer x"}, POLICY)
    assert isinstance(missing, Reject)
    assert isinstance(bad_key, Reject)
    assert isinstance(bad_token, Reject)
    assert "missing subscription key" in missing.message
    assert "invalid subscription key" in bad_key.message
    assert "Access token" in bad_token.message


def test_auth_is_checked_before_the_query() -> None:
    """Without credentials, even a malformed query answers 401."""
    assert rejected(decide(PREVIEW, {}, {}, POLICY)) == (401, "401")


def test_dev_mode_accepts_any_non_empty_credential() -> None:
    """No keys and no tokens: any credential goes, an empty one does not."""
    dev = AccessPolicy()
    assert dev.dev_mode
    assert isinstance(
        decide(PREVIEW, PREVIEW_QUERY, {"api-key": "anything"}, dev), Accept
    )
    assert isinstance(
        decide(PREVIEW, PREVIEW_QUERY, {"authorization": "Bearer x"}, dev), Accept
    )
    assert rejected(decide(PREVIEW, PREVIEW_QUERY, {"api-key": ""}, dev)) == (
        401,
        "401",
    )
    assert rejected(decide(PREVIEW, PREVIEW_QUERY, {}, dev)) == (401, "401")


def test_reject_body_is_azure_shaped() -> None:
    """{"error": {"code", "message"}}."""
    body = json.loads(Reject(404, "DeploymentNotFound", "gone").body())
    assert body == {"error": {"code": "DeploymentNotFound", "message": "gone"}}
