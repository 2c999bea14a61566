"""The policies section: the issue's example as written, and every kind of invalid rule."""

from __future__ import annotations

import hashlib
import re
import textwrap
from pathlib import Path

import pytest

from relay.config import parse_settings
from relay.config.policies import preview_warnings
from relay.exceptions import ConfigError
from relay.sansio.policy import EMPTY_POLICY, McpServer, ToolAllowList


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
        # on_violation, at the policy and per rule
        (
            "on_violation: drop",
            "policies.p.on_violation: expected one of refuse, strip, got string 'drop'",
        ),
        (
            "on_violation: true",
            "policies.p.on_violation: expected one of refuse, strip",
        ),
        (
            "deny: [{field: tools, on_violation: ignore}]",
            "policies.p.deny[0].on_violation: expected one of refuse, strip",
        ),
        (
            "deny: [{on_violation: refuse}]",
            "policies.p.deny[0].field: missing, expected a governed field",
        ),
        (
            "deny: [{field: colour, on_violation: refuse}]",
            "policies.p.deny[0].field: expected a governed field",
        ),
        (
            "deny: [{field: [tools], on_violation: refuse}]",
            "policies.p.deny[0].field: expected a governed field",
        ),
        (
            "deny: [{field: tools, when: always}]",
            "policies.p.deny[0].when: unknown key",
        ),
        (
            "allow: {voice: {values: [alloy], on_violation: sometimes}}",
            "policies.p.allow.voice.on_violation: expected one of refuse, strip",
        ),
        (
            "allow: {voice: {on_violation: refuse}}",
            "policies.p.allow.voice.values: missing, expected the rule's values",
        ),
        (
            "allow: {voice: {values: [alloy], extra: 1}}",
            "policies.p.allow.voice.extra: unknown key",
        ),
        (
            "allow: {voice: {values: []}}",
            "policies.p.allow.voice.values: expected a non-empty list",
        ),
        (
            "range: {temperature: {bounds: [0.6], on_violation: refuse}}",
            "policies.p.range.temperature.bounds: expected [min, max]",
        ),
        (
            "range: {temperature: {on_violation: refuse}}",
            "policies.p.range.temperature.bounds: missing",
        ),
        (
            "range: {temperature: {bounds: [0.6, 0.9], on_violation: 3}}",
            "policies.p.range.temperature.on_violation: expected one of refuse, strip, got number 3",
        ),
        # tool allow-lists
        ("allow: {tools: get_weather}", "policies.p.allow.tools: expected a list"),
        (
            "allow: {tools: ['get weather']}",
            "policies.p.allow.tools[0]: expected a function tool's name",
        ),
        (
            "allow: {tools: [42]}",
            "policies.p.allow.tools[0]: expected a function tool's name",
        ),
        (
            "allow: {tools: [{server_label: docs}]}",
            "policies.p.allow.tools[0]: expected exactly one of server_url and connector_id",
        ),
        (
            "allow: {tools: [{server_label: docs, server_url: 'https://a', connector_id: c}]}",
            "policies.p.allow.tools[0]: expected exactly one of server_url and connector_id",
        ),
        (
            "allow: {tools: [{server_url: 'https://a'}]}",
            "policies.p.allow.tools[0].server_label: missing",
        ),
        (
            "allow: {tools: [{server_label: docs, server_url: 'http://a'}]}",
            "policies.p.allow.tools[0].server_url: expected an https:// URL",
        ),
        (
            "allow: {tools: [{server_label: docs, server_url: 'https://a', headers: {}}]}",
            "policies.p.allow.tools[0].headers: unknown key",
        ),
        (
            "allow: {tools: {values: [f], on_violation: never}}",
            "policies.p.allow.tools.on_violation: expected one of refuse, strip",
        ),
        # rules that could never apply
        (
            "deny: [tools]\nallow: {tools: [get_weather]}",
            "policies.p.allow.tools: tools is denied, so this rule could never apply",
        ),
        (
            "deny: [turn_detection]\nallow: {turn_detection.type: [server_vad]}",
            "policies.p.allow.turn_detection.type: turn_detection is denied",
        ),
        (
            "deny: [temperature]\nrange: {temperature: [0.6, 0.9]}",
            "policies.p.range.temperature: temperature is denied",
        ),
        # GA-only fields are checked too, and in GA form against the rules
        (
            "set: {reasoning: {effort: max}}",
            "policies.p.set.reasoning: expected null or {effort: minimal|low|medium|high|xhigh}",
        ),
        (
            "set: {truncation: sometimes}",
            "policies.p.set.truncation: expected auto, disabled",
        ),
        (
            "set: {reasoning: {effort: high}}\nallow: {reasoning.effort: [low]}",
            "its set/default values break its own rules: reasoning.effort must be one of: low",
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


def test_rule_forms_and_on_violation() -> None:
    """Short and long forms mix; each long form records its rule's own on_violation."""
    policy = (
        parse(
            _with_rules(
                """
            on_violation: refuse
            deny: [instructions, {field: tools, on_violation: strip}]
            allow:
              voice: [alloy, verse]
              tool_choice: {values: [auto, none], on_violation: strip}
            range:
              temperature: {bounds: [0.6, 0.9]}
              max_response_output_tokens: {bounds: [1, 1024], on_violation: strip}
            """
            )
        )
        .clients[0]
        .policy
    )
    assert policy.deny == {"instructions", "tools"}
    assert policy.allow == {
        "voice": frozenset({"alloy", "verse"}),
        "tool_choice": frozenset({"auto", "none"}),
    }
    assert policy.range == {
        "temperature": (0.6, 0.9),
        "max_response_output_tokens": (1, 1024),
    }
    assert [
        (target, policy.on_violation_of(target))
        for target in ("instructions", "tools", "voice", "tool_choice", "temperature")
    ] == [
        ("instructions", "refuse"),
        ("tools", "strip"),
        ("voice", "refuse"),
        ("tool_choice", "strip"),
        ("temperature", "refuse"),
    ]
    assert policy.on_violation_of("max_response_output_tokens") == "strip"


def test_strip_is_the_default() -> None:
    """A policy that says nothing strips (docs/policy.md explains why)."""
    policy = parse(_with_rules("deny: [tools]")).clients[0].policy
    assert policy.on_violation == "strip"
    assert policy.on_violation_of("tools") == "strip"


def test_tool_allow_list() -> None:
    """Function tools by name, MCP servers by label and address."""
    policy = (
        parse(
            _with_rules(
                """
            allow:
              tools:
                - get_weather
                - book_table
                - {server_label: docs, server_url: "https://mcp.example.com/docs"}
                - {server_label: mail, connector_id: connector_gmail}
            """
            )
        )
        .clients[0]
        .policy
    )
    assert policy.allow_tools == ToolAllowList(
        frozenset({"get_weather", "book_table"}),
        frozenset(
            {
                McpServer("docs", server_url="https://mcp.example.com/docs"),
                McpServer("mail", connector_id="connector_gmail"),
            }
        ),
    )
    assert policy.allow == {}
    assert "tools" in policy.targets()


def test_ga_only_values_are_left_out_of_preview_sessions_with_a_warning() -> None:
    """A GA-only part loads; preview sessions do not get it, and the start-up log says so."""
    settings = parse(
        _with_rules(
            """
            set:
              turn_detection: {type: server_vad, threshold: 0.6, idle_timeout_ms: 6000}
              truncation: disabled
            default:
              voice: marin
              tools:
                - {type: function, name: lookup}
                - {type: mcp, server_label: docs, server_url: "https://mcp.example.com"}
            """
        )
    )
    policy = settings.clients[0].policy
    assert policy.initial_session("preview") == {
        "turn_detection": {"type": "server_vad", "threshold": 0.6},
        "tools": [{"type": "function", "name": "lookup"}],
    }
    assert preview_warnings(settings.source, [policy, policy]) == [
        "relay.yaml: policies.p.set.turn_detection.idle_timeout_ms: GA only, left out of sessions on preview-protocol deployments",
        "relay.yaml: policies.p.set.truncation: GA only, left out of sessions on preview-protocol deployments",
        "relay.yaml: policies.p.default.voice: GA only, left out of sessions on preview-protocol deployments",
        "relay.yaml: policies.p.default.tools[1]: GA only, left out of sessions on preview-protocol deployments",
    ]
    assert preview_warnings(settings.source, [EMPTY_POLICY]) == []


def test_the_documented_example_loads() -> None:
    """docs/policy.md's first example is a valid configuration, as written."""
    text = (Path(__file__).parents[2] / "docs" / "policy.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert example is not None
    documented = example.group(1)
    for number in range(documented.count("<hex>")):
        digest = hashlib.sha256(str(number).encode()).hexdigest()
        documented = documented.replace("<hex>", digest, 1)
    settings = parse(HEAD + documented)
    policies = {client.id: client.policy for client in settings.clients}
    assert policies["app-a"].on_violation_of("instructions") == "refuse"
    assert policies["app-a"].on_violation_of("tools") == "strip"
    assert policies["app-d"].allow_tools is not None
