"""Channels to the master: plain or TLS from the address, and the bearer token on every call.

An address ``https://host:port`` or ``grpcs://host:port``, or any address while
``$DET_MASTER_CERT_FILE`` is set, gets a TLS channel (trusting that file's certificates, else the
system's); ``http://``, ``grpc://`` and a bare ``host:port`` get a plain one. There is no silent
downgrade: a TLS channel to a plain master fails with UNAVAILABLE, never retries in clear text.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from determined_sdk import errors

CERT_ENV = "DET_MASTER_CERT_FILE"
_TLS_SCHEMES = ("https://", "grpcs://")
_PLAIN_SCHEMES = ("http://", "grpc://", "dns:///")


@dataclass(frozen=True)
class MasterAddress:
    """Where the master is and how to reach it.

    Attributes:
        target: ``host:port`` for gRPC.
        tls: Whether to use TLS.
        cert_file: PEM file of certificates to trust (None: the system's).
    """

    target: str
    tls: bool
    cert_file: str | None

    @property
    def url(self) -> str:
        """The address with its scheme (``grpcs://`` for TLS), as trials and caches name it."""
        return ("grpcs://" if self.tls else "") + self.target


def parse_master(address: str, cert_file: str | None = None) -> MasterAddress:
    """How to reach ``address``; see the module docstring.

    Args:
        address: ``host:port`` or a URL.
        cert_file: Certificates to trust (default ``$DET_MASTER_CERT_FILE``).
    """
    addr = address.strip()
    tls = False
    for scheme in _TLS_SCHEMES:
        if addr.lower().startswith(scheme):
            addr, tls = addr[len(scheme) :], True
    for scheme in _PLAIN_SCHEMES:
        if addr.lower().startswith(scheme):
            addr = addr[len(scheme) :]
    cert = cert_file or os.environ.get(CERT_ENV) or None
    if cert:
        tls = True
    return MasterAddress(addr.rstrip("/"), tls, cert)


def make_channel(master: MasterAddress, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel to ``master``: TLS when it says so (see :func:`parse_master`)."""
    if not master.tls:
        return grpc.insecure_channel(master.target, options=list(options))
    root: bytes | None = None
    if master.cert_file:
        try:
            with open(master.cert_file, "rb") as f:
                root = f.read()
        except OSError as e:
            raise errors.InvalidArgumentError(
                f"{CERT_ENV}: cannot read certificate file {master.cert_file!r}: {e.strerror or e}"
            ) from None
    return grpc.secure_channel(
        master.target, grpc.ssl_channel_credentials(root_certificates=root), options=list(options)
    )


class _CallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, d: Any, metadata: list[tuple[str, str]]) -> None:
        self.method = d.method
        self.timeout = d.timeout
        self.metadata = metadata
        self.credentials = d.credentials
        self.wait_for_ready = d.wait_for_ready
        self.compression = d.compression


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds ``authorization: Bearer <token>`` to each call (the token read at call time)."""

    def __init__(self, token: Callable[[], str | None]) -> None:
        self._token = token

    def _details(self, d: Any) -> Any:
        token = self._token()
        md = [(k, v) for k, v in (d.metadata or ()) if k != "authorization"]
        if token:
            md.append(("authorization", f"Bearer {token}"))
        return _CallDetails(d, md)

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)


def channel_from_env() -> grpc.Channel:
    """Inside a trial: a channel to ``$DET_MASTER`` carrying ``$DET_SESSION_TOKEN``.

    For training code that calls the master's RPCs directly instead of through ``core_api``.
    """
    token = os.environ.get("DET_SESSION_TOKEN")
    channel = make_channel(parse_master(os.environ["DET_MASTER"]))
    return grpc.intercept_channel(channel, BearerToken(lambda: token))
