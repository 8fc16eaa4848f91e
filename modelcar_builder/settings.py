"""How to talk to registries: the user's credential and TLS choices, and the one place
that turns them into a connected client (twine keeps `settings` apart the same way)."""

from __future__ import annotations

from dataclasses import dataclass

from modelcar_builder.auth import default_ca_file, resolve_credentials
from modelcar_builder.reference import ImageRef
from modelcar_builder.registry import RegistryClient, RetryPolicy
from modelcar_builder.registry.transport import DEFAULT_RETRY_WINDOW


@dataclass(frozen=True)
class RegistryOptions:
    authfile: str | None = None
    token_file: str | None = None
    tls_verify: bool = True
    ca_file: str | None = None
    retry_window: float = DEFAULT_RETRY_WINDOW  # seconds an outage mid-run is ridden out

    @classmethod
    def for_host(
        cls,
        authfile: str | None,
        token_file: str | None,
        tls_verify: bool,
        ca_file: str | None,
        host: str | None,
    ) -> RegistryOptions:
        """The options for a registry ``host``; in a pod the service CA is the default
        CA of in-cluster registries only (default_ca_file knows which)."""
        default_ca = default_ca_file(host=host) if tls_verify and host else None
        return cls(authfile, token_file, tls_verify, ca_file or default_ca)

    def client_for(self, ref: ImageRef) -> RegistryClient:
        """A client for ``ref``'s registry with the first credentials that apply."""
        creds = resolve_credentials(
            ref.api_host,
            repository=ref.repository,
            authfile=self.authfile,
            token_file=self.token_file,
        )
        return RegistryClient(
            ref.api_host,
            creds,
            tls_verify=self.tls_verify,
            ca_file=self.ca_file,
            retry=RetryPolicy(window=self.retry_window),
        )
