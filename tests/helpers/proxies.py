"""Real reverse proxies (nginx, HAProxy) on 127.0.0.1 in front of a relay, for tests.

Each runs in the foreground from a configuration written to a temporary
directory, with its idle timeouts short enough to matter within a test. The
binaries are required (`apt-get install nginx haproxy`): without one, the test
fails saying what to install rather than skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from tests.helpers.redis_server import free_port
from tests.helpers.timing import SECOND


__all__ = ["running_haproxy", "running_nginx"]

# A free port can be taken before the proxy binds it: retry with another.
_BIND_ATTEMPTS: Final = 5

NGINX_CONFIG: Final = """
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
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
      proxy_buffering off;
      # nginx's default is 60 s; what keeps a quiet session alive is the
      # relay's pings, whatever the value.
      proxy_read_timeout {idle};
      proxy_send_timeout {idle};
    }}
  }}
}}
"""

HAPROXY_CONFIG: Final = """
global
  maxconn 256
defaults
  mode http
  timeout connect 5s
  timeout client {idle}
  timeout server {idle}
  # After the upgrade, this is the idle bound of the WebSocket.
  timeout tunnel {idle}
frontend relay
  bind 127.0.0.1:{port}
  default_backend relays
backend relays
  server relay1 127.0.0.1:{upstream}
"""


def _binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not Path(path).exists():
        raise RuntimeError(
            f"{name} not found: these tests need it (apt-get install {name})"
        )
    return path


async def _accepting(port: int, process: asyncio.subprocess.Process) -> bool:
    """Whether ``port`` accepts connections before ``process`` exits (bounded)."""
    async with asyncio.timeout(10 * SECOND):
        for _ in range(400):
            if process.returncode is not None:
                return False
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.025)  # polling the port, bounded above
                continue
            writer.close()
            return True
    return False


@contextlib.asynccontextmanager
async def _running(
    command: list[str], config: str, directory: Path
) -> AsyncIterator[int]:
    """Start ``command`` with ``config`` (``{port}`` filled in); yield the port."""
    for _ in range(_BIND_ATTEMPTS):
        port = free_port()
        path = directory / "proxy.conf"
        path.write_text(config.replace("{port}", str(port)))
        process = await asyncio.create_subprocess_exec(
            *command,
            str(path),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            if await _accepting(port, process):
                yield port
                return
        finally:
            if process.returncode is None:
                process.terminate()
            async with asyncio.timeout(10 * SECOND):
                _, errors = await process.communicate()
        if b"in use" not in errors:
            raise RuntimeError(
                f"{command[0]} did not start: {errors.decode(errors='replace')}"
            )
    raise RuntimeError(f"{command[0]}: no free port after {_BIND_ATTEMPTS} attempts")


@contextlib.asynccontextmanager
async def running_nginx(upstream: int, *, idle: float) -> AsyncIterator[int]:
    """nginx proxying WebSockets to ``127.0.0.1:upstream``; yields its port."""
    with tempfile.TemporaryDirectory(prefix="relay-nginx-") as tmp:
        prefix = Path(tmp)
        config = NGINX_CONFIG.format(
            prefix=prefix,
            port="{port}",
            upstream=upstream,
            idle=f"{round(idle * 1000)}ms",
        )
        command = [_binary("nginx"), "-p", str(prefix), "-c"]
        async with _running(command, config, prefix) as port:
            yield port


@contextlib.asynccontextmanager
async def running_haproxy(upstream: int, *, idle: float) -> AsyncIterator[int]:
    """HAProxy proxying WebSockets to ``127.0.0.1:upstream``; yields its port."""
    with tempfile.TemporaryDirectory(prefix="relay-haproxy-") as tmp:
        config = HAPROXY_CONFIG.format(
            port="{port}", upstream=upstream, idle=f"{round(idle * 1000)}ms"
        )
        command = [_binary("haproxy"), "-db", "-f"]
        async with _running(command, config, Path(tmp)) as port:
            yield port
