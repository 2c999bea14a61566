"""`make bench`: the same audio load through the direct path, the relay and nginx.

Run: ``python bench/run.py`` (``--quick`` for a smoke run). It builds the lean C
load generator and echo upstream (bench/c), then for each load level and each
path starts a fresh measurement window:

* ``direct``: loadgen -> echo upstream (the physical limit),
* ``relay``: loadgen -> the relay (with a realistic policy) -> echo upstream,
* ``bridge``: the same relay, loadgen speaking the preview protocol and the
  echo upstream GA (``--ga``): every delta goes through the protocol bridge's
  rename (relay/sansio/bridge.py),
* ``nginx``: loadgen -> nginx as a WebSocket reverse proxy -> echo upstream
  (when nginx is installed; the bench writes its own loopback config).

The proxy under test (relay or nginx) is pinned to CPU 0; loadgen and the echo
upstream to CPU 1. CPU is read from /proc for every process, so a level where
the load generator or the upstream saturated its core is marked invalid rather
than reported as a relay result. Levels step up until the relay saturates;
runs are interleaved and repeated, and medians reported.

Then the isolation benchmark (bench/isolation.py): well-behaved sessions
while hostile ones attack the relay, one attack class at a time.
``--isolation-only`` runs only that part and ``--no-isolation`` only the
throughput part; either way the report keeps the other part from the run
that last measured it. Results go to bench/results.json
(``{"throughput": [...], "isolation": {...}}``) and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import isolation
from procs import cpu_seconds, free_port, process, rss_kib, wait_port


ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
CLIENT_KEY = "bench-client-key"
UPSTREAM_KEY = "bench-upstream-key"
PROXY_CPU = "0"
LOAD_CPU = "1"
# A level is invalid when a load-side process used more than this share of its core.
LOAD_CPU_LIMIT = 0.90
P99_TARGET_MS = 20.0
PATHS = ("direct", "relay", "bridge", "nginx", "haproxy", "pipe")  # report order
# The pipe (a Python byte splice) is the floor under any Python relay; it is
# measured where the CPU targets are set, to keep the run under ten minutes.
PIPE_LEVELS = {(100, 20), (200, 20)}
# The bridge is compared with the relay where the CPU targets are set, for the
# same reason.
BRIDGE_LEVELS = PIPE_LEVELS
# Paths measured only at some (sessions, interval) levels (all of them in a
# --quick run: a smoke run exercises every path).
PATH_LEVELS = {"pipe": PIPE_LEVELS, "bridge": BRIDGE_LEVELS}
# What loadgen asks for: the GA endpoint, or on the bridge path the preview one
# (a client of the preview protocol on the same GA deployment).
GA_TARGET = "/openai/v1/realtime?model=gpt-realtime"
PREVIEW_TARGET = (
    "/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-realtime"
)
TARGETS = {"bridge": PREVIEW_TARGET}
# The bridge path's upstream speaks GA (echo_upstream --ga); the others' the
# preview names, which the relay passes through to its GA client unchanged.
GA_UPSTREAM_PATHS = {"bridge"}
RELAY_SRC: Path | None = None


RELAY_CONFIG = """
listen: {{host: 127.0.0.1, port: {port}}}
metrics: {{host: 127.0.0.1, port: {metrics_port}}}
upstream: {{endpoint: http://127.0.0.1:{upstream}, auth: {{type: api_key, api_key_env: BENCH_UPSTREAM_KEY}}}}
deployments: {{gpt-realtime: {{}}}}
clients:
  - id: bench
    key_sha256: "{digest}"
    policy: standard
    limits: {{max_sessions: 100000, sessions_per_minute: 1000000, messages_per_second: 1000, bytes_per_second: 104857600}}
policies:
  standard:   # a realistic policy: every client event is parsed and judged
    set:
      input_audio_noise_reduction: {{type: near_field}}
      turn_detection: {{type: server_vad, threshold: 0.6, prefix_padding_ms: 300, silence_duration_ms: 500, create_response: true, interrupt_response: true}}
    default: {{voice: alloy}}
    allow: {{voice: [alloy, verse]}}
    range: {{max_response_output_tokens: [1, 1024]}}
    deny: [tools, tool_choice]
limits: {{max_sessions: 100000, handshake_timeout: 60}}
log: {{format: json, level: warning}}
"""

NGINX_CONFIG = """
worker_processes 1;
worker_cpu_affinity 01;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
      proxy_buffering off;
    }}
  }}
}}
"""


@dataclass
class Run:
    """One path at one level, one repetition."""

    path: str
    sessions: int
    interval_ms: int
    connected: int = 0
    sent: int = 0
    received: int = 0
    lost: int = 0
    late_sends: int = 0
    unmatched: int = 0
    other_events: int = 0
    rtt_p50_ms: float = 0.0
    rtt_p99_ms: float = 0.0
    rtt_max_ms: float = 0.0
    proxy_cpu_s: float = 0.0
    loadgen_cpu_share: float = 0.0
    upstream_cpu_share: float = 0.0
    proxy_rss_kib: int = 0
    proxy_rss_added_kib: int = 0
    window_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.notes

    @property
    def relayed(self) -> int:
        return self.sent + self.received

    @property
    def cpu_us_per_msg(self) -> float:
        return self.proxy_cpu_s * 1e6 / self.relayed if self.relayed else 0.0

    def read_results(self, data: dict[str, Any]) -> None:
        """Take loadgen's results (its ``--out`` JSON) and note what makes the run
        invalid; the CPU shares must be set already."""
        self.connected = data["sessions_connected"]
        self.sent, self.received, self.lost = (
            data["sent"],
            data["received"],
            data["lost"],
        )
        self.late_sends = data["late_sends"]
        self.unmatched, self.other_events = data["unmatched"], data["other_events"]
        # No append answered (say, deltas under a name loadgen does not read):
        # no round trips, 0 here; the losses noted below make the run invalid.
        rtt = {k: v or 0 for k, v in data["rtt_us"].items()}
        self.rtt_p50_ms, self.rtt_p99_ms, self.rtt_max_ms = (
            rtt["p50"] / 1000,
            rtt["p99"] / 1000,
            rtt["max"] / 1000,
        )
        if self.connected < self.sessions:
            self.notes.append(
                f"only {self.connected}/{self.sessions} sessions connected"
            )
        if self.lost:
            self.notes.append(f"{self.lost} messages lost")
        if self.late_sends:
            self.notes.append(f"load generator late on {self.late_sends} sends")
        # Every server message after session.created should be an audio delta
        # answering an append under the preview name; anything else (a delta
        # under GA's name that the bridge did not rename, an error) means the
        # load was not what the report says, even where nothing was lost.
        if self.unmatched:
            self.notes.append(f"{self.unmatched} deltas matched no append")
        if self.other_events:
            self.notes.append(f"{self.other_events} events other than audio deltas")
        for name, share in (
            ("loadgen", self.loadgen_cpu_share),
            ("upstream", self.upstream_cpu_share),
        ):
            if share > LOAD_CPU_LIMIT:
                self.notes.append(f"{name} used {share:.0%} of its core")


class Bench:
    """Processes and measurements for one bench invocation."""

    def __init__(self, work: Path, *, duration: float, warmup: float) -> None:
        self.work = work
        self.duration = duration
        self.warmup = warmup
        self.loadgen = OUT / "loadgen"
        self.echo = OUT / "echo_upstream"

    def measure(
        self,
        path: str,
        port: int,
        proxy_pid: int | None,
        echo_pid: int,
        sessions: int,
        interval_ms: int,
    ) -> Run:
        chunk = 48 * interval_ms  # PCM16 24 kHz: 48 bytes per millisecond
        results = (
            self.work
            / f"loadgen-{path}-{sessions}-{interval_ms}-{time.monotonic_ns()}.json"
        )
        url = f"ws://127.0.0.1:{port}{TARGETS.get(path, GA_TARGET)}"
        args = [
            str(self.loadgen),
            "--url",
            url,
            "--header",
            f"api-key: {CLIENT_KEY}",
            "--sessions",
            str(sessions),
            "--interval-ms",
            str(interval_ms),
            "--chunk-bytes",
            str(chunk),
            "--duration",
            str(self.duration),
            "--warmup",
            str(self.warmup),
            "--out",
            str(results),
        ]
        run = Run(path, sessions, interval_ms)
        baseline_kib = rss_kib(proxy_pid) if proxy_pid else 0
        with process(args, cpu=LOAD_CPU) as loadgen:
            # The window starts when loadgen's warm-up ends: all sessions are up
            # by then (it connects first), and ends with its duration.
            started = self._wait_for_window(loadgen, sessions)
            proxy_before = cpu_seconds(proxy_pid) if proxy_pid else 0.0
            load_before, echo_before = cpu_seconds(loadgen.pid), cpu_seconds(echo_pid)
            time.sleep(self.duration)  # the measurement window itself
            run.window_s = time.monotonic() - started
            run.proxy_cpu_s = (
                (cpu_seconds(proxy_pid) - proxy_before) if proxy_pid else 0.0
            )
            run.loadgen_cpu_share = (
                cpu_seconds(loadgen.pid) - load_before
            ) / run.window_s
            run.upstream_cpu_share = (
                cpu_seconds(echo_pid) - echo_before
            ) / run.window_s
            run.proxy_rss_kib = rss_kib(proxy_pid) if proxy_pid else 0
            run.proxy_rss_added_kib = run.proxy_rss_kib - baseline_kib
            loadgen.wait(timeout=60)
        run.read_results(json.loads(results.read_text()))
        return run

    def _wait_for_window(
        self, loadgen: subprocess.Popen[bytes], sessions: int
    ) -> float:
        # loadgen connects at up to 500 sessions/s, then warms up.
        time.sleep(sessions / 500 + 0.5 + self.warmup)
        if loadgen.poll() is not None:
            raise RuntimeError(f"loadgen exited early with {loadgen.returncode}")
        return time.monotonic()


@contextlib.contextmanager
def upstream(bench: Bench, *, ga: bool = False) -> Iterator[tuple[int, int]]:
    """The echo upstream: its port and pid; ``ga``: it speaks GA (``--ga``)."""
    port = free_port()
    args = [str(bench.echo), "--host", "127.0.0.1", "--port", str(port)]
    with process([*args, "--ga"] if ga else args, cpu=LOAD_CPU) as echo:
        wait_port(port)
        yield port, echo.pid


@contextlib.contextmanager
def relay(bench: Bench, upstream_port: int) -> Iterator[tuple[int, int]]:
    port, metrics_port = free_port(), free_port()
    config = bench.work / "relay.yaml"
    config.write_text(
        RELAY_CONFIG.format(
            port=port,
            metrics_port=metrics_port,
            upstream=upstream_port,
            digest=hashlib.sha256(CLIENT_KEY.encode()).hexdigest(),
        )
    )
    args = [sys.executable, "-m", "relay", "run", "--config", str(config)]
    env = {"BENCH_UPSTREAM_KEY": UPSTREAM_KEY}
    # `python -m` puts the working directory first on sys.path: run from the
    # tree whose relay is measured.
    src = (RELAY_SRC or ROOT).resolve()
    env["PYTHONPATH"] = str(src)
    with process(
        args, cpu=PROXY_CPU, env=env, log=bench.work / "relay.log", cwd=src
    ) as child:
        wait_port(port)
        yield port, child.pid


HAPROXY_CONFIG = """
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 3600s
  timeout server 3600s
  timeout tunnel 3600s
frontend bench
  bind 127.0.0.1:{port}
  default_backend echo
backend echo
  server echo1 127.0.0.1:{upstream}
"""


@contextlib.contextmanager
def haproxy(bench: Bench, upstream_port: int) -> Iterator[tuple[int, int]]:
    """HAProxy 2.x in HTTP mode (WebSocket tunnel after the upgrade), one thread."""
    port = free_port()
    conf = bench.work / "haproxy.cfg"
    conf.write_text(HAPROXY_CONFIG.format(port=port, upstream=upstream_port))
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    with process([binary, "-db", "-f", str(conf)], cpu=PROXY_CPU) as child:
        wait_port(port)
        yield port, child.pid


@contextlib.contextmanager
def pipe(bench: Bench, upstream_port: int) -> Iterator[tuple[int, int]]:
    """bench/pipe.py: bytes spliced in Python, the floor of any Python relay."""
    port = free_port()
    args = [sys.executable, str(ROOT / "bench" / "pipe.py")]
    args += ["--port", str(port), "--upstream", str(upstream_port)]
    with process(args, cpu=PROXY_CPU, log=bench.work / "pipe.log") as child:
        wait_port(port)
        yield port, child.pid


@contextlib.contextmanager
def nginx(bench: Bench, upstream_port: int) -> Iterator[tuple[int, int]]:
    port = free_port()
    prefix = bench.work / "nginx"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONFIG.format(prefix=prefix, port=port, upstream=upstream_port)
    )
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    with process(
        [binary, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"], cpu=PROXY_CPU
    ) as child:
        wait_port(port)
        yield port, child.pid


def idle_rss_per_session(bench: Bench, upstream_port: int, sessions: int) -> float:
    """KiB of relay RSS per connected, quiet session, beyond the process baseline."""
    with relay(bench, upstream_port) as (port, pid):
        baseline = rss_kib(pid)
        results = bench.work / "idle.json"
        args = [
            str(bench.loadgen),
            "--url",
            f"ws://127.0.0.1:{port}{GA_TARGET}",
            "--header",
            f"api-key: {CLIENT_KEY}",
            "--sessions",
            str(sessions),
            "--interval-ms",
            "3600000",
            "--chunk-bytes",
            "960",
            "--duration",
            "3",
            "--warmup",
            "1",
            "--out",
            str(results),
        ]
        with process(args, cpu=LOAD_CPU) as loadgen:
            time.sleep(sessions / 500 + 2.5)  # connected and settled
            loaded = rss_kib(pid)
            loadgen.wait(timeout=60)
    return (loaded - baseline) / sessions


def median_run(runs: list[Run]) -> dict[str, Any]:
    """The median of repeated runs of one path and level (valid only if all were)."""
    first = runs[0]
    return {
        "path": first.path,
        "sessions": first.sessions,
        "interval_ms": first.interval_ms,
        "valid": all(run.valid for run in runs),
        "repeats": len(runs),
        "cpu_us_per_msg": round(
            statistics.median(run.cpu_us_per_msg for run in runs), 2
        ),
        "rtt_p50_ms": round(statistics.median(run.rtt_p50_ms for run in runs), 3),
        "rtt_p99_ms": round(statistics.median(run.rtt_p99_ms for run in runs), 3),
        "rtt_max_ms": round(statistics.median(run.rtt_max_ms for run in runs), 3),
        "delivered_per_s": round(
            statistics.median(
                run.relayed / run.window_s for run in runs if run.window_s
            ),
            1,
        ),
        "lost": sum(run.lost for run in runs),
        "proxy_rss_kib": int(statistics.median(run.proxy_rss_kib for run in runs)),
        "proxy_rss_added_kib": int(
            statistics.median(run.proxy_rss_added_kib for run in runs)
        ),
        "loadgen_cpu_share": round(max(run.loadgen_cpu_share for run in runs), 3),
        "upstream_cpu_share": round(max(run.upstream_cpu_share for run in runs), 3),
        "notes": sorted({note for run in runs for note in run.notes}),
    }


def with_ratios(
    records: list[dict[str, Any]], idle_kib: float | None
) -> list[dict[str, Any]]:
    """Add added latency versus direct, CPU versus nginx (and the bridge's versus
    the relay's) and the RSS per session, pair by pair."""
    direct = {
        (r["sessions"], r["interval_ms"]): r for r in records if r["path"] == "direct"
    }
    nginx_records = {
        (r["sessions"], r["interval_ms"]): r for r in records if r["path"] == "nginx"
    }
    relay_records = {
        (r["sessions"], r["interval_ms"]): r for r in records if r["path"] == "relay"
    }
    for record in records:
        key = (record["sessions"], record["interval_ms"])
        base = direct.get(key)
        record["p50_added_ms"] = (
            round(record["rtt_p50_ms"] - base["rtt_p50_ms"], 3) if base else None
        )
        record["p99_added_ms"] = (
            round(record["rtt_p99_ms"] - base["rtt_p99_ms"], 3) if base else None
        )
        peer = nginx_records.get(key)
        record["cpu_vs_nginx"] = (
            round(record["cpu_us_per_msg"] / peer["cpu_us_per_msg"], 2)
            if peer and peer["cpu_us_per_msg"] and record["path"] != "direct"
            else None
        )
        # What the translation costs: the bridge against the relay it runs in.
        plain = relay_records.get(key)
        record["cpu_vs_relay"] = (
            round(record["cpu_us_per_msg"] / plain["cpu_us_per_msg"], 2)
            if plain and plain["cpu_us_per_msg"] and record["path"] == "bridge"
            else None
        )
        # Streaming: the proxy's RSS growth from before the load to the end of
        # the window, per session (the process baseline excluded).
        record["rss_kb_per_session"] = (
            round(record["proxy_rss_added_kib"] * 1.024 / record["sessions"], 1)
            if record["path"] != "direct"
            else None
        )
        record["idle_rss_kb_per_session"] = (
            round(idle_kib * 1.024, 1)
            if (idle_kib is not None and record["path"] == "relay")
            else None
        )
    return records


def max_sessions(records: list[dict[str, Any]], path: str) -> int:
    """The highest valid 20 ms level with p99 added latency under the target."""
    ok = [
        r["sessions"]
        for r in records
        if r["path"] == path
        and r["interval_ms"] == 20
        and r["valid"]
        and r["p99_added_ms"] is not None
        and r["p99_added_ms"] < P99_TARGET_MS
    ]
    return max(ok, default=0)


def targets(records: list[dict[str, Any]], idle_kb: float | None) -> list[str]:
    """The issue's four targets against this run's figures, met or not."""

    def at(path: str, sessions: int) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in records
                if r["path"] == path
                and r["sessions"] == sessions
                and r["interval_ms"] == 20
            ),
            None,
        )

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "**not met**")

    lines = ["## Targets", "", "| target | measured | status |", "|---|---|---|"]
    for sessions in (100, 200):
        r, peer = at("relay", sessions), at("nginx", sessions)
        ratio = r["cpu_vs_nginx"] if r else None
        figure = (
            f"{ratio:.2f}x ({r['cpu_us_per_msg']:.1f} vs {peer['cpu_us_per_msg']:.1f} µs/msg)"
            if r and peer and ratio is not None
            else "n/a"
        )
        lines.append(
            f"| relay CPU per message <= 1.5x nginx at {sessions} sessions | {figure} | {verdict(None if ratio is None else ratio <= 1.5)} |"
        )
    best = max_sessions(records, "relay")
    lines.append(
        f"| >= 300 sessions per core at 20 ms, p99 added < {P99_TARGET_MS:g} ms | {best} | {verdict(best >= 300)} |"
    )
    r = at("relay", 100)
    p99 = r["p99_added_ms"] if r else None
    lines.append(
        f"| p99 added latency <= 5 ms at 100 sessions | {_fmt(p99)} ms | {verdict(None if p99 is None else p99 <= 5)} |"
    )
    lines.append(
        f"| RSS per idle session <= 64 KB | {_fmt(idle_kb, 1)} KB | {verdict(None if idle_kb is None else idle_kb <= 64)} |"
    )
    floors = [
        f"{r['cpu_us_per_msg']:.1f} µs/msg at {r['sessions']} sessions "
        f"({r['cpu_vs_nginx']:.2f}x nginx)"
        for r in (at("pipe", 100), at("pipe", 200))
        if r and r["cpu_vs_nginx"] is not None
    ]
    if floors:
        lines += [
            "",
            "Floor: a Python byte splice (`pipe`) costs " + ", ".join(floors) + ".",
        ]
    return [*lines, ""]


def bridge_summary(records: list[dict[str, Any]]) -> list[str]:
    """The bridge's cost against the relay's, level by level (nothing if not measured)."""
    relay_records = {
        (r["sessions"], r["interval_ms"]): r for r in records if r["path"] == "relay"
    }
    figures = []
    for r in sorted(
        (r for r in records if r["path"] == "bridge"),
        key=lambda r: (r["interval_ms"], r["sessions"]),
    ):
        plain = relay_records.get((r["sessions"], r["interval_ms"]))
        if r["cpu_vs_relay"] is None or plain is None:
            continue
        figures.append(
            f"bridge/relay {r['cpu_vs_relay']:.2f}x at {r['sessions']} sessions"
            + ("" if r["interval_ms"] == 20 else f" every {r['interval_ms']} ms")
            + f" ({r['cpu_us_per_msg']:.1f} vs {plain['cpu_us_per_msg']:.1f} µs/msg), "
            f"p99 added {_fmt(r['p99_added_ms'])} ms (relay {_fmt(plain['p99_added_ms'])} ms)"
            + ("" if r["valid"] and plain["valid"] else ", **invalid**")
        )
    if not figures:
        return []
    return [
        "Protocol bridge (`bridge`: a preview client on a GA upstream, every delta renamed): "
        "CPU per message " + "; ".join(figures) + ".",
        "",
    ]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def throughput_report(
    records: list[dict[str, Any]], args: argparse.Namespace, elapsed: float
) -> list[str]:
    """The throughput part of docs/benchmarks.md (everything before ``## Isolation``)."""
    versions = {
        "python": platform.python_version(),
        "nginx": subprocess.run(
            ["nginx", "-v"], capture_output=True, text=True, check=False
        ).stderr.strip()
        if shutil.which("nginx")
        else "not installed",
        "kernel": platform.release(),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "unknown",
        ),
        "cores": os.cpu_count(),
    }
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python bench/run.py`); do not edit by hand. Raw records: `bench/results.json`.",
        "",
        f"Machine: {versions['cpu']}, {versions['cores']} cores, kernel {versions['kernel']}; Python {versions['python']}; {versions['nginx']}.",
        f"Command: `{' '.join(['python', 'bench/run.py', *sys.argv[1:]])}`; {args.repeats} repeats per point (medians), {args.duration:g} s windows after {args.warmup:g} s warm-up; took {elapsed / 60:.1f} min.",
        "",
        "Load: each session appends PCM16 24 kHz audio (`input_audio_buffer.append`, base64) every `interval` ms while the echo upstream answers each with a `response.audio.delta` of the same audio. "
        "The proxy under test runs alone on CPU 0; the C load generator and echo upstream share CPU 1. "
        "`cpu µs/msg` is the proxy's CPU (user + system, from /proc) per relayed message (each append and each delta counts once). "
        "Added latency is the round-trip percentile minus the direct path's at the same level, in the same run. "
        "A point is *invalid* when the load side saturated (late sends, losses, or a load process above 90 % of its core), "
        "or when the load generator read anything but audio deltas answering its appends (a delta it cannot match, any other event).",
        "",
        "`load cpu` is the busier of the load generator and the echo upstream, as a share of their core (both share CPU 1). "
        "`RSS KB/session` is the proxy's resident memory growth under load, per streaming session. "
        "`pipe` is `bench/pipe.py`, bytes spliced between two sockets in Python on uvloop with no framing, policy or metrics: "
        "the floor under any Python relay, measured at 100 and 200 sessions. "
        "`bridge` is the relay with the same policy, its client speaking the preview protocol "
        f"(`{PREVIEW_TARGET}`) and the echo upstream GA (`echo_upstream --ga`, "
        "`response.output_audio.delta`): every delta goes through the protocol bridge's rename to `response.audio.delta`; "
        "measured at 100 and 200 sessions. "
        "`haproxy` (HAProxy 2.x, one thread) is measured when asked for (`--paths direct,relay,nginx,haproxy`).",
        "",
        "| path | sessions | interval | valid | msgs/s | lost | cpu µs/msg | vs nginx | p50 ms | p99 ms | max ms | p50 added | p99 added | RSS KB/session | load cpu | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        records,
        key=lambda r: (
            r["interval_ms"],
            r["sessions"],
            PATHS.index(r["path"]),
        ),
    ):
        cells = [
            r["path"],
            str(r["sessions"]),
            f"{r['interval_ms']} ms",
            "yes" if r["valid"] else "no",
            f"{r['delivered_per_s']:.0f}",
            str(r["lost"]),
            _fmt(r["cpu_us_per_msg"], 1),
            _fmt(r["cpu_vs_nginx"]),
            _fmt(r["rtt_p50_ms"]),
            _fmt(r["rtt_p99_ms"]),
            _fmt(r["rtt_max_ms"]),
            _fmt(r["p50_added_ms"]),
            _fmt(r["p99_added_ms"]),
            _fmt(r["rss_kb_per_session"], 1),
            f"{max(r['loadgen_cpu_share'], r['upstream_cpu_share']):.0%}",
            "; ".join(r["notes"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    idle = next(
        (
            r["idle_rss_kb_per_session"]
            for r in records
            if r.get("idle_rss_kb_per_session") is not None
        ),
        None,
    )
    lines += [
        "",
        f"Maximum sessions per core at 20 ms with p99 added latency under {P99_TARGET_MS:g} ms (highest level measured): "
        f"relay {max_sessions(records, 'relay')}, nginx {max_sessions(records, 'nginx')}.",
        f"Relay RSS per idle session beyond the process baseline: {idle if idle is not None else 'not measured'} KB.",
        "",
        *bridge_summary(records),
        *targets(records, idle),
    ]
    return lines


ISOLATION_HEADING = "## Isolation"


def publish(
    throughput: tuple[list[dict[str, Any]], list[str]] | None,
    isolated: tuple[dict[str, Any], list[str]] | None,
    *,
    results: Path = ROOT / "bench" / "results.json",
    doc: Path = ROOT / "docs" / "benchmarks.md",
) -> None:
    """Write the parts measured (records and report lines) over the previous ones.

    A part not measured in this run (``None``) keeps what the last run that
    measured it wrote: ``--isolation-only`` leaves the throughput tables alone
    and ``--no-isolation`` the isolation table. ``results`` holds
    ``{"throughput": [...], "isolation": {...}}``.
    """
    old_results: Any = json.loads(results.read_text()) if results.exists() else {}
    if isinstance(old_results, list):  # written before the isolation part existed
        old_results = {"throughput": old_results}
    old_doc = doc.read_text() if doc.exists() else ""
    cut = old_doc.find("\n" + ISOLATION_HEADING + "\n")
    old_parts = (old_doc, "") if cut < 0 else (old_doc[: cut + 1], old_doc[cut + 1 :])
    merged = dict(old_results)
    parts = list(old_parts)
    if throughput is not None:
        merged["throughput"], lines = throughput
        parts[0] = "\n".join(lines)
    if isolated is not None:
        merged["isolation"], lines = isolated
        parts[1] = "\n".join(lines)
    results.write_text(json.dumps(merged, indent=2) + "\n")
    first, second = parts[0].rstrip("\n"), parts[1].strip("\n")
    doc.write_text(first + ("\n\n" + second + "\n" if second else "\n"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--levels",
        default="50,100,200,300,400,600,800",
        help="session counts to step through",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--duration", type=float, default=4.0, help="seconds measured per run"
    )
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: one small level, one repeat; every attack class with one attacker for 2 s",
    )
    parser.add_argument(
        "--no-report", action="store_true", help="print the records, write nothing"
    )
    parser.add_argument(
        "--paths",
        default="direct,relay,bridge,nginx,pipe",
        help="paths to measure, of direct, relay, bridge (the relay translating a preview client to a GA upstream), nginx, haproxy (opt-in), pipe (a Python byte splice: the floor of any Python relay); direct is needed for added latency, relay for saturation and the bridge's ratio",
    )
    parser.add_argument(
        "--relay-src",
        type=Path,
        help="run the relay from this source tree (e.g. a git worktree of another commit), to compare versions",
    )
    parser.add_argument(
        "--out", type=Path, help="also write the throughput records to this JSON file"
    )
    parser.add_argument(
        "--isolation-only",
        action="store_true",
        help="only the isolation benchmark (attackers against well-behaved sessions); the report keeps its throughput part",
    )
    parser.add_argument(
        "--no-isolation",
        action="store_true",
        help="only the throughput benchmark; the report keeps its isolation part",
    )
    parser.add_argument(
        "--classes",
        default=",".join(c.name for c in isolation.CLASSES),
        help="attack classes of the isolation benchmark",
    )
    args = parser.parse_args()
    global RELAY_SRC
    RELAY_SRC = args.relay_src
    if args.quick:
        args.levels, args.repeats, args.duration, args.warmup = "20", 1, 1.5, 0.5
    subprocess.run(
        ["make", "-s", "-C", str(ROOT / "bench" / "c"), f"OUT={OUT}"], check=True
    )
    installed = {
        name: bool(shutil.which(name)) or Path(f"/usr/sbin/{name}").exists()
        for name in ("nginx", "haproxy")
    }
    paths = [p for p in args.paths.split(",") if installed.get(p, True)]
    by_name = {c.name: c for c in isolation.CLASSES}
    classes = [by_name[name] for name in args.classes.split(",")]
    throughput = None
    if not args.isolation_only:
        started = time.monotonic()
        records = measure_throughput(args, paths)
        if args.out:
            args.out.write_text(json.dumps(records, indent=2) + "\n")
        lines = throughput_report(records, args, time.monotonic() - started)
        throughput = (records, lines)
    isolated = None
    if not args.no_isolation:
        timing = isolation.QUICK if args.quick else isolation.Timing()
        with tempfile.TemporaryDirectory(prefix="relay-isolation-") as tmp:
            result = isolation.Isolation(Path(tmp), timing, args.relay_src).run(classes)
        command = " ".join(["python", "bench/run.py", *sys.argv[1:]])
        isolated = (result, isolation.report(result, command))
    if args.no_report:
        print(
            json.dumps(
                {
                    "throughput": throughput and throughput[0],
                    "isolation": isolated and isolated[0],
                },
                indent=2,
            )
        )
    else:
        publish(throughput, isolated)
    return 0


def measure_throughput(
    args: argparse.Namespace, paths: list[str]
) -> list[dict[str, Any]]:
    """Every path at every level (until the relay saturates); the median records."""
    runs: dict[tuple[str, int, int], list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        bench = Bench(Path(tmp), duration=args.duration, warmup=args.warmup)
        with upstream(bench) as preview, contextlib.ExitStack() as stack:
            # The GA upstream runs only when a path needs it; idle, it costs
            # CPU 1 nothing.
            ga = (
                stack.enter_context(upstream(bench, ga=True))
                if GA_UPSTREAM_PATHS.intersection(paths)
                else preview
            )

            def level(sessions: int, interval: int) -> None:
                for _ in range(args.repeats):  # interleaved: every path each round
                    for path in paths:
                        limited = PATH_LEVELS.get(path)
                        if (
                            limited is not None
                            and (sessions, interval) not in limited
                            and not args.quick
                        ):
                            continue
                        port, pid = ga if path in GA_UPSTREAM_PATHS else preview
                        run = _run_path(bench, path, port, pid, sessions, interval)
                        runs.setdefault((path, sessions, interval), []).append(run)
                        print(
                            json.dumps(
                                asdict(run)
                                | {"cpu_us_per_msg": round(run.cpu_us_per_msg, 2)}
                            ),
                            flush=True,
                        )

            for sessions in (int(value) for value in args.levels.split(",")):
                level(sessions, 20)
                if _saturated(runs, sessions):
                    print(
                        f"relay saturated at {sessions} sessions: no higher level",
                        flush=True,
                    )
                    break
            if not args.quick:
                # The realistic 100 ms cadence (Azure's advice), at one level.
                level(100, 100)
            idle_kib = idle_rss_per_session(
                bench, preview[0], 20 if args.quick else 200
            )
    return with_ratios([median_run(group) for group in runs.values()], idle_kib)


def _saturated(runs: dict[tuple[str, int, int], list[Run]], sessions: int) -> bool:
    relay_runs = runs[("relay", sessions, 20)]
    direct_p99 = statistics.median(r.rtt_p99_ms for r in runs[("direct", sessions, 20)])
    relay_p99 = statistics.median(r.rtt_p99_ms for r in relay_runs)
    return (
        not all(r.valid for r in relay_runs) or relay_p99 - direct_p99 > P99_TARGET_MS
    )


def _run_path(
    bench: Bench,
    path: str,
    upstream_port: int,
    echo_pid: int,
    sessions: int,
    interval: int,
) -> Run:
    if path == "direct":
        return bench.measure(path, upstream_port, None, echo_pid, sessions, interval)
    starter = {
        "relay": relay,
        "bridge": relay,  # the same relay and policy; the client and upstream differ
        "nginx": nginx,
        "haproxy": haproxy,
        "pipe": pipe,
    }[path]
    with starter(bench, upstream_port) as (port, pid):
        return bench.measure(path, port, pid, echo_pid, sessions, interval)


if __name__ == "__main__":
    sys.exit(main())
