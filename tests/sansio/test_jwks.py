"""JWT header, key set, claim and fetch rules, without an event loop or a socket."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, strategies as st

from relay.exceptions import Unauthenticated
from relay.sansio.jwks import (
    ASYMMETRIC_ALGORITHMS,
    MAX_HEADER_LENGTH,
    MAX_JWKS_BYTES,
    MAX_JWKS_KEYS,
    MAX_TOKEN_LENGTH,
    FetchState,
    JwksPolicy,
    TokenHeader,
    UnknownKid,
    check_time_claims,
    client_id,
    fetch_failed,
    fetch_started,
    fetch_succeeded,
    key_fits,
    looks_like_jwt,
    on_unknown_kid,
    parse_header,
    parse_jwks,
    refresh_delay,
)


ALLOWED = ("RS256", "ES256")
RSA = {"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"}
EC = {"kty": "EC", "kid": "e", "crv": "P-256", "x": "AA", "y": "AA"}
OKP = {"kty": "OKP", "kid": "o", "crv": "Ed25519", "x": "AA"}
POLICY = JwksPolicy(cache_seconds=300.0, refetch_interval=30.0)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def token(header: Any, payload: bytes = b"{}", signature: str = "c2ln") -> str:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return f"{b64(raw)}.{b64(payload)}.{signature}"


def reason(exc: pytest.ExceptionInfo[Unauthenticated]) -> str:
    return exc.value.reason


def outcome(value: str) -> str:
    """``ok``, or the reason ``parse_header`` refuses ``value``."""
    try:
        parse_header(value, ALLOWED)
    except Unauthenticated as exc:
        return exc.reason
    return "ok"


class TestParseHeader:
    def test_reads_alg_and_kid(self) -> None:
        """A well-formed header gives its algorithm and key id."""
        assert parse_header(token({"alg": "RS256", "kid": "k1"}), ALLOWED) == (
            TokenHeader(alg="RS256", kid="k1")
        )

    def test_kid_is_optional(self) -> None:
        """The key id may be absent; the edge decides what that means."""
        assert parse_header(token({"alg": "ES256"}), ALLOWED).kid is None

    @pytest.mark.parametrize(
        "alg", ["none", "None", "HS256", "HS512", "RS384", "", "ES256K"]
    )
    def test_algorithm_outside_the_allow_list_is_refused(self, alg: str) -> None:
        """``none``, HMAC and algorithms not configured are bad algorithms."""
        with pytest.raises(Unauthenticated) as caught:
            parse_header(token({"alg": alg, "kid": "k"}, signature=""), ALLOWED)
        assert reason(caught) == "bad_algorithm"

    def test_hmac_is_refused_even_if_allowed_by_mistake(self) -> None:
        """An allow-list holding HS256 still never lets it through."""
        with pytest.raises(Unauthenticated) as caught:
            parse_header(token({"alg": "HS256"}), ("HS256", "RS256"))
        assert reason(caught) == "bad_algorithm"

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "é.é.é",
            "..",
            token(b"not json"),
            token(b"\xff\xfe"),
            token([1, 2]),
            token({"kid": "k"}),
            token({"alg": 256}),
            token({"alg": "RS256", "kid": 7}),
            token({"alg": "RS256"}).replace(".", "!", 1),
            "=" + token({"alg": "RS256"}),
            b64(b"[" * 700) + ".e30.c2ln",
        ],
    )
    def test_garbage_is_malformed(self, value: str) -> None:
        """Anything but a compact JWS with a JSON object header is malformed."""
        with pytest.raises(Unauthenticated) as caught:
            parse_header(value, ALLOWED)
        assert reason(caught) == "malformed"

    def test_oversized_token_is_malformed_unread(self) -> None:
        """A token longer than the cap is refused before its header is read."""
        big = token({"alg": "RS256", "kid": "k"}, b"x" * MAX_TOKEN_LENGTH)
        with pytest.raises(Unauthenticated) as caught:
            parse_header(big, ALLOWED)
        assert reason(caught) == "malformed"

    def test_oversized_header_is_malformed(self) -> None:
        """A header longer than the cap is never decoded."""
        header = {"alg": "RS256", "pad": "x" * MAX_HEADER_LENGTH}
        with pytest.raises(Unauthenticated) as caught:
            parse_header(token(header), ALLOWED)
        assert reason(caught) == "malformed"

    @given(st.text(max_size=200))
    def test_any_text_is_parsed_or_refused(self, value: str) -> None:
        """No input makes parsing fail other than with Unauthenticated."""
        assert outcome(value) in {"ok", "malformed", "bad_algorithm"}

    @given(st.dictionaries(st.text(max_size=5), st.from_type(type(None)) | st.text()))
    def test_any_json_header_is_parsed_or_refused(self, header: dict[str, Any]) -> None:
        """Headers of any shape are parsed or refused with a reason."""
        assert outcome(token(header)) in {"ok", "malformed", "bad_algorithm"}


class TestLooksLikeJwt:
    def test_jwt_shape(self) -> None:
        """Three base64url segments with a JSON header holding ``alg``."""
        assert looks_like_jwt(token({"alg": "RS256", "kid": "k"}))

    def test_unsigned_and_unallowed_tokens_still_look_like_jwts(self) -> None:
        """Shape only: the verifier, not this check, refuses them."""
        assert looks_like_jwt(token({"alg": "none"}, signature=""))
        assert looks_like_jwt(token({"alg": "HS256"}))

    @pytest.mark.parametrize(
        "value",
        [
            "sk-static-relay-key-0123456789",
            "a.b.c",
            "abc.def.ghi",
            token({"typ": "JWT"}),
            token([]),
            "",
        ],
    )
    def test_static_keys_and_junk_do_not(self, value: str) -> None:
        """A static key (or anything without a JSON header with alg) is not a JWT."""
        assert not looks_like_jwt(value)

    @given(st.text(max_size=100))
    def test_never_raises(self, value: str) -> None:
        """Any text gets an answer."""
        assert looks_like_jwt(value) in {True, False}


class TestParseJwks:
    def test_keeps_signing_keys_in_order(self) -> None:
        """RSA, EC and OKP public keys with a kid are kept."""
        body = json.dumps({"keys": [RSA, EC, OKP]}).encode()
        assert parse_jwks(body).keys == (RSA, EC, OKP)
        assert parse_jwks(body).skipped == 0

    @pytest.mark.parametrize(
        "member",
        [
            {**RSA, "use": "enc"},
            {**RSA, "key_ops": ["encrypt"]},
            {**RSA, "key_ops": "verify"},
            {**RSA, "alg": "RSA-OAEP"},
            {**RSA, "alg": "HS256"},
            {**RSA, "d": "secret"},
            {**EC, "d": "secret"},
            {"kty": "oct", "kid": "s", "k": "c2VjcmV0"},
            {**RSA, "kid": 5},
            {**RSA, "kid": ""},
            {key: value for key, value in RSA.items() if key != "kid"},
            {key: value for key, value in RSA.items() if key != "n"},
            {**EC, "y": 3},
            {**RSA, "kty": "XYZ"},
            {**RSA, "kty": None},
            "not-a-key",
            None,
        ],
    )
    def test_skips_keys_that_cannot_verify(self, member: Any) -> None:
        """Other uses, private or symmetric keys and broken members are skipped."""
        signing = parse_jwks(json.dumps({"keys": [member, RSA]}).encode())
        assert signing.keys == (RSA,)
        assert signing.skipped == 1

    def test_signing_use_and_verify_op_are_kept(self) -> None:
        """``use: sig`` and ``key_ops`` holding ``verify`` are signing keys."""
        member = {**RSA, "use": "sig", "key_ops": ["verify"], "alg": "PS256"}
        assert parse_jwks(json.dumps({"keys": [member]}).encode()).keys == (member,)

    def test_first_of_duplicate_kids_wins(self) -> None:
        """A kid names one key; a later duplicate is skipped."""
        duplicate = {**EC, "kid": RSA["kid"]}
        signing = parse_jwks(json.dumps({"keys": [RSA, duplicate]}).encode())
        assert signing.keys == (RSA,)
        assert signing.skipped == 1

    def test_reads_at_most_the_key_cap(self) -> None:
        """Members past the cap are skipped."""
        members = [{**RSA, "kid": str(i)} for i in range(MAX_JWKS_KEYS + 5)]
        signing = parse_jwks(json.dumps({"keys": members}).encode())
        assert len(signing.keys) == MAX_JWKS_KEYS
        assert signing.skipped == 5

    def test_empty_key_set_has_no_keys(self) -> None:
        """An empty set parses; the edge decides it is unusable."""
        assert parse_jwks(b'{"keys": []}').keys == ()

    @pytest.mark.parametrize(
        "body",
        [
            b"",
            b"not json",
            b"\xff\xfe",
            b"[]",
            b'{"keys": {}}',
            b'{"key": []}',
            b"[" * 100_000,
        ],
    )
    def test_invalid_documents_are_errors(self, body: bytes) -> None:
        """A body that is not a key set document raises ValueError."""
        with pytest.raises(ValueError, match="key set"):
            parse_jwks(body)

    def test_oversized_document_is_an_error(self) -> None:
        """More than the size cap is refused before parsing."""
        with pytest.raises(ValueError, match="too large"):
            parse_jwks(b" " * (MAX_JWKS_BYTES + 1))


class TestKeyFits:
    @pytest.mark.parametrize(
        ("alg", "jwk"),
        [
            ("RS256", RSA),
            ("RS512", RSA),
            ("PS256", RSA),
            ("ES256", EC),
            ("ES384", {**EC, "crv": "P-384"}),
            ("ES512", {**EC, "crv": "P-521"}),
            ("EdDSA", OKP),
            ("RS256", {**RSA, "alg": "RS256"}),
        ],
    )
    def test_fitting_pairs(self, alg: str, jwk: dict[str, Any]) -> None:
        """The algorithm's key type, curve and any declared alg match."""
        assert key_fits(alg, jwk)

    @pytest.mark.parametrize(
        ("alg", "jwk"),
        [
            ("RS256", EC),
            ("ES256", RSA),
            ("ES256", {**EC, "crv": "P-384"}),
            ("ES384", EC),
            ("EdDSA", RSA),
            ("PS256", {**RSA, "alg": "RS256"}),
            ("HS256", RSA),
            ("none", RSA),
        ],
    )
    def test_mismatched_pairs(self, alg: str, jwk: dict[str, Any]) -> None:
        """A key never verifies an algorithm it was not made for."""
        assert not key_fits(alg, jwk)

    def test_every_allowed_algorithm_has_a_key_type(self) -> None:
        """No configurable algorithm is left without a key rule."""
        keys = [RSA, EC, {**EC, "crv": "P-384"}, {**EC, "crv": "P-521"}, OKP]
        for alg in ASYMMETRIC_ALGORITHMS:
            assert any(key_fits(alg, jwk) for jwk in keys), alg


class TestTimeClaims:
    NOW = 1_700_000_000.0

    def test_valid_token_passes(self) -> None:
        """exp in the future, nbf and iat in the past."""
        claims = {"exp": self.NOW + 60, "nbf": self.NOW - 1, "iat": self.NOW - 1}
        check_time_claims(claims, self.NOW, 30.0)

    @pytest.mark.parametrize(
        ("claims", "expected"),
        [
            ({"exp": NOW - 31}, "expired"),
            ({"exp": NOW - 30}, "expired"),
            ({"exp": NOW + 60, "nbf": NOW + 31}, "not_yet_valid"),
            ({"exp": NOW + 60, "iat": NOW + 31}, "not_yet_valid"),
            ({}, "missing_claim"),
            ({"exp": "soon"}, "malformed"),
            ({"exp": True}, "malformed"),
            ({"exp": None}, "malformed"),
            ({"exp": float("nan")}, "malformed"),
            ({"exp": float("inf")}, "malformed"),
            ({"exp": 10**400}, "malformed"),
            ({"exp": NOW + 60, "nbf": [1]}, "malformed"),
            ({"exp": NOW + 60, "iat": "yesterday"}, "malformed"),
        ],
    )
    def test_refusals(self, claims: dict[str, Any], expected: str) -> None:
        """Each bad time claim has its reason."""
        with pytest.raises(Unauthenticated) as caught:
            check_time_claims(claims, self.NOW, 30.0)
        assert reason(caught) == expected

    def test_leeway_absorbs_skew(self) -> None:
        """Just expired or just not valid yet, within leeway, passes."""
        claims = {"exp": self.NOW - 29, "nbf": self.NOW + 29, "iat": self.NOW + 29}
        check_time_claims(claims, self.NOW, 30.0)

    def test_integer_claims(self) -> None:
        """NumericDates are usually integers."""
        check_time_claims({"exp": int(self.NOW) + 60}, self.NOW, 0.0)


class TestClientId:
    def test_string_claim(self) -> None:
        """The claim's string value is the client id."""
        assert client_id({"azp": "app-a"}, "azp") == "app-a"

    @pytest.mark.parametrize("claims", [{}, {"azp": ""}, {"azp": 7}, {"azp": ["a"]}])
    def test_missing_or_not_a_string(self, claims: dict[str, Any]) -> None:
        """Absent, empty or non-string client claims are missing."""
        with pytest.raises(Unauthenticated) as caught:
            client_id(claims, "azp")
        assert reason(caught) == "missing_claim"


class TestUnknownKid:
    def test_first_ever_fetch_is_allowed(self) -> None:
        """With nothing fetched yet, a fetch may start."""
        assert on_unknown_kid(FetchState(), 0.0, POLICY) is UnknownKid.FETCH

    def test_joins_a_fetch_in_flight(self) -> None:
        """Concurrent askers share the fetch already running."""
        state = fetch_started(FetchState(), 100.0)
        assert on_unknown_kid(state, 100.0, POLICY) is UnknownKid.JOIN
        assert on_unknown_kid(state, 10_000.0, POLICY) is UnknownKid.JOIN

    def test_refused_within_the_interval_of_any_fetch(self) -> None:
        """Right after a fetch, good or bad, unknown kids are refused at once."""
        started = fetch_started(FetchState(), 100.0)
        for ended in (
            fetch_succeeded(started, 101.0, keys=2),
            fetch_failed(started, 101.0),
        ):
            assert on_unknown_kid(ended, 100.0, POLICY) is UnknownKid.REFUSE
            assert on_unknown_kid(ended, 129.9, POLICY) is UnknownKid.REFUSE
            assert on_unknown_kid(ended, 130.0, POLICY) is UnknownKid.FETCH

    def test_clock_stepped_back_allows_a_fetch(self) -> None:
        """A clock set back does not block fetches until it catches up."""
        state = fetch_succeeded(fetch_started(FetchState(), 100.0), 100.0, keys=1)
        assert on_unknown_kid(state, 50.0, POLICY) is UnknownKid.FETCH

    def test_many_asks_in_one_interval_start_one_fetch(self) -> None:
        """Driving the rules as the edge does: one fetch per interval."""
        state = fetch_succeeded(fetch_started(FetchState(), 0.0), 0.0, keys=1)
        fetches = 0
        for step in range(10_000):
            now = step * 0.01  # 100 seconds in all
            action = on_unknown_kid(state, now, POLICY)
            if action is UnknownKid.FETCH:
                fetches += 1
                state = fetch_failed(fetch_started(state, now), now)
        assert fetches == 3  # at 30, 60 and 90 seconds


class TestFetchState:
    def test_success_records_keys_and_resets_failures(self) -> None:
        """A good fetch loads keys, clears failures and stamps the times."""
        state = fetch_failed(fetch_started(FetchState(), 1.0), 2.0)
        state = fetch_succeeded(fetch_started(state, 3.0), 4.0, keys=3)
        assert state == FetchState(
            keys_loaded=3,
            in_flight=False,
            last_attempt_at=3.0,
            last_fetch_at=4.0,
            last_fetch_ok=True,
            last_success_at=4.0,
            failures=0,
        )

    def test_failure_keeps_keys(self) -> None:
        """A failed fetch counts up and keeps the last good key count."""
        state = fetch_succeeded(fetch_started(FetchState(), 1.0), 2.0, keys=3)
        state = fetch_failed(fetch_started(state, 3.0), 4.0)
        state = fetch_failed(fetch_started(state, 5.0), 6.0)
        assert state.keys_loaded == 3
        assert state.failures == 2
        assert not state.last_fetch_ok
        assert state.last_success_at == 2.0
        assert state.last_fetch_at == 6.0


class TestRefreshDelay:
    def test_fetch_now_when_never_fetched(self) -> None:
        """The first fetch is due at once."""
        assert refresh_delay(FetchState(), 0.0, POLICY) == 0.0

    def test_wait_while_in_flight_is_zero(self) -> None:
        """While a fetch runs, the refresher waits for it, not a timer."""
        assert refresh_delay(fetch_started(FetchState(), 0.0), 5.0, POLICY) == 0.0

    def test_good_set_is_refreshed_after_cache_seconds(self) -> None:
        """The refresh is due ``cache_seconds`` after the good fetch started."""
        state = fetch_succeeded(fetch_started(FetchState(), 100.0), 101.0, keys=1)
        assert refresh_delay(state, 100.0, POLICY) == 300.0
        assert refresh_delay(state, 350.0, POLICY) == 50.0
        assert refresh_delay(state, 1_000.0, POLICY) == 0.0

    def test_failures_back_off_up_to_the_refetch_interval(self) -> None:
        """Retries wait 1, 2, 4... seconds, never more than refetch_interval."""
        state = FetchState()
        delays = []
        for _ in range(8):
            state = fetch_failed(fetch_started(state, 0.0), 0.0)
            delays.append(refresh_delay(state, 0.0, POLICY))
        assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]

    def test_many_failures_do_not_overflow(self) -> None:
        """A long outage keeps a bounded retry delay."""
        state = FetchState(last_attempt_at=0.0, failures=10_000)
        assert refresh_delay(state, 0.0, POLICY) == 30.0

    def test_short_cache_caps_the_retry(self) -> None:
        """Retries never wait longer than cache_seconds."""
        policy = JwksPolicy(cache_seconds=0.5, refetch_interval=30.0)
        state = FetchState(last_attempt_at=0.0, failures=5)
        assert refresh_delay(state, 0.0, policy) == 0.5

    def test_clock_stepped_back_waits_at_most_cache_seconds(self) -> None:
        """A clock set back never postpones the refresh beyond cache_seconds."""
        state = fetch_succeeded(fetch_started(FetchState(), 10_000.0), 10_000.0, 1)
        assert refresh_delay(state, 0.0, POLICY) == 300.0
