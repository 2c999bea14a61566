"""The policies section: the issue's example as written, and every kind of invalid rule."""

from __future__ import annotations

import hashlib
import textwrap

import pytest

from relay.config import parse_settings
from relay.exceptions import ConfigError
from relay.sansio.policy import EMPTY_POLICY


HEX_A = hashlib.sha256(b"a").hexdigest()
HEX_B = hashlib.sha256(b"b").hexdigest()
HEAD = """
upstream: {endpoint: https://res.openai.azure.com, auth: {type: entra}}
deployments: {gpt-realtime: }
"""
ISSUE_EXAMPLE = (
    HEAD
    + f"""
clients:
  - {{id: app-a, key_sha256: "{HEX_A}", policy: standard}}
  - {{id: app-b, key_sha256: "{HEX_B}", policy: eager}}
policies:
  standard:
    set:        # forced into every session; a client's different value is overwritten
      input_audio_noise_reduction: {{type: near_field}}
      turn_detection: {{type: server_vad, threshold: 0.6, prefix_padding_ms: 300, silence_duration_ms: 500, create_response: true, interrupt_response: true}}
    default:    # applied at session start; the client may change it
      voice: alloy
    allow:      # enum allow-lists; another value is refused
      voice: [alloy, verse]
    range:      # numeric bounds; a value outside is clamped to the bound
      temperature: [0.6, 0.9]
      max_response_output_tokens: [1, 1024]
    deny: [tools, tool_choice, instructions]   # the client may not set these at all
  eager:
    set:
      input_audio_noise_reduction: {{type: far_field}}
      turn_detection: {{type: semantic_vad, eagerness: high, create_response: true, interrupt_response: true}}
"""
)


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_settings(textwrap.dedent(text), source="relay.yaml", environ={})


def test_issue_example_loads_as_written() -> None:
    """Both policies of the issue load and reach their clients."""
    settings = parse(ISSUE_EXAMPLE)
    standard, eager = settings.clients[0].policy, settings.clients[1].policy
    assert standard.name == "standard"
    assert standard.set["input_audio_noise_reduction"] == {"type": "near_field"}
    assert standard.default == {"voice": "alloy"}
    assert standard.allow == {"voice": frozenset({"alloy", "verse"})}
    assert standard.range == {
        "temperature": (0.6, 0.9),
        "max_response_output_tokens": (1, 1024),
    }
    assert standard.deny == {"tools", "tool_choice", "instructions"}
    assert eager.set["turn_detection"]["eagerness"] == "high"
    assert standard.initial_session("ga") == {
        "type": "realtime",
        "audio": {
            "output": {"voice": "alloy"},
            "input": {
                "noise_reduction": {"type": "near_field"},
                "turn_detection": standard.set["turn_detection"],
            },
        },
    }


def test_clients_without_a_policy_get_the_default() -> None:
    """No policy named and no `default` configured: the empty policy (pass-through)."""
    settings = parse(HEAD + f'clients: [{{id: a, key_sha256: "{HEX_A}"}}]')
    assert settings.clients[0].policy is EMPTY_POLICY
    named = parse(
        HEAD
        + f'clients: [{{id: a, key_sha256: "{HEX_A}"}}]\npolicies: {{default: {{deny: [tools]}}}}'
    )
    assert named.clients[0].policy.deny == {"tools"}


def _with_rules(rules: str) -> str:
    return (
        HEAD
        + f'clients: [{{id: a, key_sha256: "{HEX_A}", policy: p}}]\npolicies:\n  p:\n'
        + textwrap.indent(textwrap.dedent(rules), "    ")
    )


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            "set: {input_audio_noise_reduction: true}",
            "policies.p.set.input_audio_noise_reduction: expected null or {type: near_field|far_field} (not a boolean), got boolean true",
        ),
        (
            "set: {input_audio_noise_reduction: {type: mid_field}}",
            "policies.p.set.input_audio_noise_reduction: expected null or {type",
        ),
        (
            "set: {turn_detection: {type: semantic_vad, eagerness: true}}",
            "policies.p.set.turn_detection: expected eagerness one of low, medium, high, auto",
        ),
        (
            "set: {turn_detection: {type: semantic_vad, eagerness: eager}}",
            "policies.p.set.turn_detection: expected eagerness one of",
        ),
        (
            "set: {turn_detection: {type: server_vad, eagerness: high}}",
            "expected eagerness only with type semantic_vad",
        ),
        (
            "set: {turn_detection: {type: semantic_vad, threshold: 0.5}}",
            "expected no 'threshold' in a semantic_vad turn_detection",
        ),
        (
            "set: {turn_detection: {type: server_vad, threshold: 1.5}}",
            "expected threshold a number from 0 to 1",
        ),
        (
            "set: {turn_detection: {type: server_vad, surprise: 1}}",
            "expected no 'surprise' in a server_vad turn_detection",
        ),
        (
            "set: {turn_detection: {type: whisper_vad}}",
            "expected turn_detection.type server_vad or semantic_vad",
        ),
        (
            "set: {temperature: 1.5}",
            "policies.p.set.temperature: expected a number from 0.6 to 1.2",
        ),
        (
            "set: {max_response_output_tokens: 5000}",
            'expected an integer from 1 to 4096 or "inf"',
        ),
        (
            "default: {voice: robot}",
            "policies.p.default.voice: expected one of alloy, ash",
        ),
        (
            "default: {colour: blue}",
            "policies.p.default.colour: unknown field (known: input_audio_noise_reduction",
        ),
        (
            "allow: {voice: [alloy, robot]}",
            "policies.p.allow.voice[1]: expected one of",
        ),
        ("allow: {voice: []}", "policies.p.allow.voice: expected a non-empty list"),
        ("allow: {colour: [blue]}", "policies.p.allow.colour: unknown field"),
        (
            "range: {temperature: [0.9, 0.6]}",
            "policies.p.range.temperature: expected [min, max] numbers within 0.6..1.2, min <= max",
        ),
        (
            "range: {temperature: [0.1, 0.9]}",
            "policies.p.range.temperature: expected [min, max]",
        ),
        (
            "range: {max_response_output_tokens: [1, 1.5]}",
            "policies.p.range.max_response_output_tokens: expected [min, max] integers",
        ),
        ("range: {max_response_output_tokens: [1]}", "expected [min, max]"),
        ("range: {voice: [1, 2]}", "policies.p.range.voice: unknown field"),
        ("deny: [tools, colour]", "policies.p.deny[1]: expected a governed field"),
        ("deny: tools", "policies.p.deny: expected a list"),
        (
            "events: {deny: [session.upgrade]}",
            "policies.p.events.deny[0]: expected a client event type",
        ),
        ("events: {block: [response.create]}", "policies.p.events.block: unknown key"),
        ("hide: [voice]", "policies.p.hide[0]: expected instructions or tools"),
        ("sett: {voice: alloy}", "policies.p.sett: unknown key"),
        (
            "set: {voice: shimmer}\nallow: {voice: [alloy]}",
            "policies.p: its set/default values break its own rules: voice must be one of: alloy",
        ),
        (
            "default: {temperature: 1.1}\nrange: {temperature: [0.6, 0.9]}",
            "policies.p: a set/default value of temperature is outside its range",
        ),
    ],
)
def test_invalid_rules_name_the_policy_and_the_field(rules: str, message: str) -> None:
    """Every documented constraint is enforced when the file is loaded."""
    with pytest.raises(ConfigError) as info:
        parse(_with_rules(rules))
    assert message in str(info.value)
    assert str(info.value).startswith("relay.yaml: ")


def test_a_client_naming_a_missing_policy() -> None:
    """A typo in a client's policy name is an error, not a silent pass-through."""
    with pytest.raises(
        ConfigError,
        match=r"clients\[0\].policy: expected the name of a configured policy \(p\)",
    ):
        parse(
            HEAD
            + f'clients: [{{id: a, key_sha256: "{HEX_A}", policy: q}}]\npolicies: {{p: {{deny: [tools]}}}}'
        )


def test_a_policy_no_client_uses() -> None:
    """An unreachable policy is an error naming it."""
    with pytest.raises(
        ConfigError, match=r"policies\.unused: no client uses this policy"
    ):
        parse(
            HEAD
            + f'clients: [{{id: a, key_sha256: "{HEX_A}"}}]\npolicies: {{unused: {{deny: [tools]}}}}'
        )


def test_denied_fields_may_still_be_set_by_the_relay() -> None:
    """The organisation's instructions can be forced while clients may not send any."""
    settings = parse(
        _with_rules("set: {instructions: Be brief.}\ndeny: [instructions]")
    )
    assert settings.clients[0].policy.initial_session("preview") == {
        "instructions": "Be brief."
    }
