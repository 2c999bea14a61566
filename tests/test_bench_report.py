"""The benchmark's arithmetic (bench/run.py) and its Python floor (bench/pipe.py).

The report's figures are what the performance issue is judged on, so the
pairing (added latency against direct, CPU against nginx, the bridge's CPU
against the relay's, all at the same level), the sessions-per-core rule and
the target verdicts are checked on hand-made records, and so is how a run that
measured one part of the report keeps the other. Which loadgen results make a
run invalid is checked on hand-made results. The pipe is run as a process and a real WebSocket session
is spliced through it to a real server. The isolation part has its own
tests (test_bench_isolation.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tests.helpers.bench import load
from tests.helpers.timing import SECOND


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load("run")


def record(path: str, sessions: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "path": path,
        "sessions": sessions,
        "interval_ms": 20,
        "valid": True,
        "cpu_us_per_msg": 0.0,
        "rtt_p50_ms": 0.1,
        "rtt_p99_ms": 0.2,
        "proxy_rss_added_kib": 0,
    }
    return base | fields


def level(
    sessions: int, relay_cpu: float, nginx_cpu: float, relay_p99: float
) -> list[dict[str, Any]]:
    return [
        record("direct", sessions, rtt_p50_ms=0.05, rtt_p99_ms=0.1),
        record(
            "relay",
            sessions,
            cpu_us_per_msg=relay_cpu,
            rtt_p99_ms=relay_p99,
            proxy_rss_added_kib=1000,
        ),
        record("nginx", sessions, cpu_us_per_msg=nginx_cpu, rtt_p99_ms=0.15),
    ]


def test_pairs_are_taken_at_the_same_level(bench: ModuleType) -> None:
    records = bench.with_ratios(
        [*level(100, 15.0, 10.0, 1.1), *level(200, 30.0, 10.0, 5.1)], 40.0
    )
    by = {(r["path"], r["sessions"]): r for r in records}
    assert by[("relay", 100)]["cpu_vs_nginx"] == 1.5
    assert by[("relay", 200)]["cpu_vs_nginx"] == 3.0
    assert by[("relay", 100)]["p99_added_ms"] == 1.0
    assert by[("relay", 200)]["p99_added_ms"] == 5.0
    assert (
        by[("relay", 100)]["rss_kb_per_session"] == 10.2
    )  # 1000 KiB over 100 sessions, in KB
    assert by[("direct", 100)]["cpu_vs_nginx"] is None
    assert by[("nginx", 100)]["idle_rss_kb_per_session"] is None
    assert by[("relay", 100)]["idle_rss_kb_per_session"] == 41.0


def test_a_level_without_a_peer_has_no_ratio(bench: ModuleType) -> None:
    records = bench.with_ratios([record("relay", 50, cpu_us_per_msg=9.0)], None)
    assert records[0]["cpu_vs_nginx"] is None
    assert records[0]["p99_added_ms"] is None


def test_sessions_per_core_skips_invalid_and_slow_levels(bench: ModuleType) -> None:
    records = bench.with_ratios(
        [
            *level(100, 15.0, 10.0, 1.0),
            *level(300, 15.0, 10.0, 19.0),
            *level(400, 15.0, 10.0, 25.0),  # p99 added over 20 ms
            *[
                r | {"valid": False} for r in level(600, 15.0, 10.0, 1.0)
            ],  # load side saturated
        ],
        None,
    )
    assert bench.max_sessions(records, "relay") == 300
    assert bench.max_sessions(records, "missing") == 0


def test_targets_report_met_and_not_met(bench: ModuleType) -> None:
    records = bench.with_ratios(
        [*level(100, 15.0, 10.0, 1.1), *level(200, 30.0, 10.0, 5.1)], None
    )
    table = "\n".join(bench.targets(records, 70.0))
    assert re.search(
        r"1.5x nginx at 100 sessions \| 1.50x \(15.0 vs 10.0 µs/msg\) \| met", table
    )
    assert re.search(r"1.5x nginx at 200 sessions \| 3.00x .*\| \*\*not met\*\*", table)
    assert re.search(r"300 sessions per core.*\| 200 \| \*\*not met\*\*", table)
    assert re.search(
        r"p99 added latency <= 5 ms at 100 sessions \| 1.00 ms \| met", table
    )
    assert re.search(
        r"RSS per idle session <= 64 KB \| 70.0 KB \| \*\*not met\*\*", table
    )
    assert "Floor" not in table


def test_targets_without_measurements_say_so(bench: ModuleType) -> None:
    table = "\n".join(bench.targets([], None))
    assert table.count("not measured") == 4  # the sessions figure is 0, and not met


def loadgen_results(**fields: Any) -> dict[str, Any]:
    """loadgen's results for 10 sessions, every append answered, as it writes them."""
    base: dict[str, Any] = {
        "sessions_connected": 10,
        "sent": 500,
        "received": 500,
        "lost": 0,
        "late_sends": 0,
        "unmatched": 0,
        "other_events": 0,
        "rtt_us": {"p50": 150, "p99": 400, "max": 900},
    }
    return base | fields


def test_a_run_with_every_append_answered_is_valid(bench: ModuleType) -> None:
    run = bench.Run("bridge", 10, 20)
    run.read_results(loadgen_results())
    assert run.valid
    assert (run.rtt_p50_ms, run.rtt_p99_ms, run.rtt_max_ms) == (0.15, 0.4, 0.9)


def test_a_run_whose_deltas_were_not_read_is_invalid(bench: ModuleType) -> None:
    """Deltas under a name loadgen does not read (GA's, not renamed by the
    bridge) answer nothing: the run is invalid and says why, with no round trip."""
    run = bench.Run("bridge", 10, 20)
    run.read_results(
        loadgen_results(
            received=0,
            lost=500,
            other_events=750,
            rtt_us={"p50": None, "p99": None, "max": None},
        )
    )
    assert not run.valid
    assert run.notes == ["500 messages lost", "750 events other than audio deltas"]
    assert run.rtt_p99_ms == 0


def test_a_run_with_unmatched_deltas_is_invalid(bench: ModuleType) -> None:
    run = bench.Run("bridge", 10, 20)
    run.read_results(loadgen_results(unmatched=3))
    assert run.notes == ["3 deltas matched no append"]


def bridged(sessions: int, cpu: float, p99: float, **fields: Any) -> dict[str, Any]:
    return record("bridge", sessions, cpu_us_per_msg=cpu, rtt_p99_ms=p99, **fields)


def test_the_bridge_is_compared_with_the_relay_at_the_same_level(
    bench: ModuleType,
) -> None:
    records = bench.with_ratios(
        [
            *level(100, 40.0, 10.0, 1.1),
            *level(200, 30.0, 10.0, 5.1),
            bridged(100, 41.6, 1.3),
            bridged(200, 33.0, 5.6),
        ],
        None,
    )
    by = {(r["path"], r["sessions"]): r for r in records}
    assert by[("bridge", 100)]["cpu_vs_relay"] == 1.04
    assert by[("bridge", 200)]["cpu_vs_relay"] == 1.1
    assert by[("bridge", 100)]["p99_added_ms"] == 1.2
    assert by[("relay", 100)]["cpu_vs_relay"] is None
    summary = " ".join(bench.bridge_summary(records))
    assert (
        "bridge/relay 1.04x at 100 sessions (41.6 vs 40.0 µs/msg), "
        "p99 added 1.20 ms (relay 1.00 ms); "
        "bridge/relay 1.10x at 200 sessions (33.0 vs 30.0 µs/msg), "
        "p99 added 5.50 ms (relay 5.00 ms)."
    ) in summary
    assert "invalid" not in summary


def test_the_bridge_summary_flags_invalid_levels_and_needs_the_relay(
    bench: ModuleType,
) -> None:
    records = bench.with_ratios(
        [*level(100, 40.0, 10.0, 1.1), bridged(100, 41.6, 1.3, valid=False)], None
    )
    assert (
        "at 100 sessions (41.6 vs 40.0 µs/msg), p99 added 1.20 ms (relay 1.00 ms), **invalid**."
        in (" ".join(bench.bridge_summary(records)))
    )
    alone = bench.with_ratios([bridged(100, 41.6, 1.3)], None)
    assert alone[0]["cpu_vs_relay"] is None
    assert bench.bridge_summary(alone) == []


def test_the_report_has_a_bridge_row_and_sentence(bench: ModuleType) -> None:
    shown = {
        "delivered_per_s": 10000.0,
        "lost": 0,
        "rtt_max_ms": 1.0,
        "loadgen_cpu_share": 0.2,
        "upstream_cpu_share": 0.1,
        "notes": [],
    }
    records = bench.with_ratios(
        [r | shown for r in [*level(100, 40.0, 10.0, 1.1), bridged(100, 41.6, 1.3)]],
        None,
    )
    args = argparse.Namespace(repeats=3, duration=4.0, warmup=1.0)
    lines = bench.throughput_report(records, args, 60.0)
    rows = [
        line.split(" | ")[0] for line in lines if re.match(r"\| \w+ \| 100 \|", line)
    ]
    assert rows == ["| direct", "| relay", "| bridge", "| nginx"]  # report order
    bridge_row = next(line for line in lines if line.startswith("| bridge |"))
    assert "| 41.6 | 4.16 |" in bridge_row  # cpu µs/msg, vs nginx
    assert any(line.startswith("Protocol bridge (`bridge`") for line in lines)


def test_publish_keeps_the_part_not_measured(bench: ModuleType, tmp_path: Path) -> None:
    """--isolation-only rewrites only the isolation part of both files, and
    --no-isolation only the throughput part; records written as a bare list
    (before the isolation part existed) are kept as the throughput records."""
    results, doc = tmp_path / "results.json", tmp_path / "benchmarks.md"
    results.write_text(json.dumps([{"path": "relay"}]))
    doc.write_text("# Benchmarks\n\nold throughput\n")
    isolation = ({"rows": [1]}, ["## Isolation", "", "first isolation"])
    bench.publish(None, isolation, results=results, doc=doc)
    assert json.loads(results.read_text()) == {
        "throughput": [{"path": "relay"}],
        "isolation": {"rows": [1]},
    }
    assert doc.read_text() == (
        "# Benchmarks\n\nold throughput\n\n## Isolation\n\nfirst isolation\n"
    )
    throughput = ([{"path": "nginx"}], ["# Benchmarks", "", "new throughput", ""])
    bench.publish(throughput, None, results=results, doc=doc)
    assert json.loads(results.read_text())["throughput"] == [{"path": "nginx"}]
    assert doc.read_text() == (
        "# Benchmarks\n\nnew throughput\n\n## Isolation\n\nfirst isolation\n"
    )
    bench.publish(
        None, ({"rows": [2]}, ["## Isolation", "", "second"]), results=results, doc=doc
    )
    assert doc.read_text().endswith("new throughput\n\n## Isolation\n\nsecond\n")
    assert json.loads(results.read_text())["isolation"] == {"rows": [2]}


# -- bench/pipe.py -------------------------------------------------------------


async def echo(connection: ServerConnection) -> None:
    async for message in connection:
        await connection.send(message)


@pytest.fixture
async def pipe_port() -> AsyncIterator[int]:
    async with serve(echo, "127.0.0.1", 0, compression=None) as server:
        upstream = next(iter(server.sockets)).getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "bench" / "pipe.py"),
            "--port",
            "0",
            "--upstream",
            str(upstream),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            async with asyncio.timeout(10 * SECOND):
                line = (await process.stdout.readline()).decode()
            match = re.fullmatch(r"listening on (\d+)\n", line)
            assert match, line
            yield int(match.group(1))
        finally:
            process.kill()
            await process.wait()


async def test_pipe_splices_a_websocket_session(pipe_port: int) -> None:
    messages = [b"x" * size for size in (0, 1, 125, 126, 65535, 65536, 1 << 20)]
    async with asyncio.timeout(10 * SECOND):
        async with connect(
            f"ws://127.0.0.1:{pipe_port}/", compression=None, max_size=2 << 20
        ) as ws:
            for message in messages:
                await ws.send(message)
            assert [await ws.recv() for _ in messages] == messages
            await ws.send("text survives")
            assert await ws.recv() == "text survives"


async def test_pipe_sessions_are_independent(pipe_port: int) -> None:
    # Many sessions at once and one closing early: the others are unaffected.
    async with asyncio.timeout(10 * SECOND):
        sessions = [
            await connect(f"ws://127.0.0.1:{pipe_port}/", compression=None)
            for _ in range(20)
        ]
        await sessions[0].close()
        for index, ws in enumerate(sessions[1:], start=1):
            await ws.send(f"hello {index}")
            assert await ws.recv() == f"hello {index}"
            await ws.close()
