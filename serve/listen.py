"""Listening: the address policy, the HTTP protocol with a header timeout, uvicorn's limits.

``distill serve`` binds loopback unless an admin token is configured; connections whose
request headers do not arrive within ``header_timeout_s`` are closed (uvicorn has no such
timeout); ``max_connections`` caps concurrent connections (503 beyond).
"""

from __future__ import annotations

import ipaddress
import os

from serve.app import create_app
from serve.config import TOKEN_ENV, ServeConfig


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def header_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol that closes connections whose request headers stall (slowloris)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        _timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def connection_lost(self, exc):
            if self._timer is not None:
                self._timer.cancel()
            super().connection_lost(exc)

        def _waiting(self) -> bool:  # no request in progress: its headers are not all in
            return self.cycle is None or self.cycle.response_complete

        def _watch(self) -> None:
            if not self._waiting():
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            elif self._timer is None:
                self._timer = self.loop.call_later(seconds, self._expire)

        def _expire(self) -> None:
            self._timer = None
            if self._waiting() and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11


def uvicorn_config(app, cfg: ServeConfig, host: str, port: int):
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=header_timeout_protocol(cfg.header_timeout_s),
        limit_concurrency=cfg.max_connections,
        timeout_keep_alive=5,
    )


def serve(cfg: ServeConfig, host: str, port: int) -> None:
    import uvicorn

    if not is_loopback(host) and not (cfg.admin_token or os.environ.get(TOKEN_ENV)):
        raise SystemExit(
            f"refusing to bind {host}: without an admin token anyone who can reach it could swap "
            f"students; set {TOKEN_ENV} (or admin_token=...) or bind 127.0.0.1"
        )
    uvicorn.Server(uvicorn_config(create_app(cfg), cfg, host, port)).run()
