"""How a client reaches Narset: its bearer token and TLS files, taken the same way by the CLI, the
Python client and the worker's link process.

Secrets come from the environment or from files, never from a command line (which every local user
can read in the process table): `NARSET_TOKEN` or `NARSET_TOKEN_FILE`; `NARSET_TLS_CA` (the CA that
signed Narset's certificate) turns TLS on, and `NARSET_TLS_CERT` with `NARSET_TLS_KEY` add a client
certificate for mutual TLS. Explicit arguments win over the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from narset.contract.limits import message_size_options

if TYPE_CHECKING:
    import grpc

__all__ = ["TOKEN_ENV", "Connection"]

TOKEN_ENV = "NARSET_TOKEN"
TOKEN_FILE_ENV = "NARSET_TOKEN_FILE"
TLS_CA_ENV = "NARSET_TLS_CA"
TLS_CERT_ENV = "NARSET_TLS_CERT"
TLS_KEY_ENV = "NARSET_TLS_KEY"


def _path(given: str | Path | None, environ: Mapping[str, str], name: str) -> Path | None:
    value = given or environ.get(name)
    return Path(value) if value else None


@dataclass(frozen=True, slots=True)
class Connection:
    """A token to send and the TLS files to trust and show; all optional (plain text, no token)."""

    token: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("a client certificate needs both tls_cert and tls_key")

    @classmethod
    def resolve(
        cls,
        token: str | None = None,
        token_file: str | Path | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> Connection:
        """The explicit values, else those of the environment."""
        token = token or environ.get(TOKEN_ENV)
        token_path = _path(token_file, environ, TOKEN_FILE_ENV)
        if not token and token_path is not None:
            token = token_path.read_text().strip()
        return cls(
            token=token or None,
            tls_ca=_path(tls_ca, environ, TLS_CA_ENV),
            tls_cert=_path(tls_cert, environ, TLS_CERT_ENV),
            tls_key=_path(tls_key, environ, TLS_KEY_ENV),
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What every call sends: the bearer token, if any."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self, address: str, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
        """A channel to `address`: TLS when a CA or a client certificate is configured, else plain text;
        messages up to the one limit both ways (`narset.contract.limits.MAX_MESSAGE_BYTES`)."""
        # Imported here: a training process imports this module (in the worker's link) and must hold
        # no gRPC state when it forks; only the link's child process opens channels.
        import grpc

        options = [*message_size_options(), *options]
        if self.tls_ca is None and self.tls_cert is None:
            return grpc.insecure_channel(address, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca.read_bytes() if self.tls_ca is not None else None,
            private_key=self.tls_key.read_bytes() if self.tls_key is not None else None,
            certificate_chain=self.tls_cert.read_bytes() if self.tls_cert is not None else None,
        )
        return grpc.secure_channel(address, credentials, options=options)
