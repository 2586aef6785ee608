"""TLS for the links to and from the LIS (D5): contexts from the configuration, with the
peer's certificate checked, and the addresses a server takes connections from."""

from __future__ import annotations

import ipaddress
import ssl

from middleware.settings import TlsConfig


class TlsError(Exception):
    """A certificate or key that cannot be used; the message names the file."""


def client_context(config: TlsConfig) -> ssl.SSLContext:
    """Checks the server's certificate and name; shows ours when configured."""
    try:
        context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
        if config.cert_file is not None and config.key_file is not None:
            context.load_cert_chain(config.cert_file, config.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"TLS to the LIS: {exc}") from None
    return context


def server_context(config: TlsConfig) -> ssl.SSLContext:
    """Shows our certificate; checks the client's when it is required."""
    if config.cert_file is None or config.key_file is None:
        raise TlsError("TLS on the orders port needs cert_file and key_file")
    try:
        context = ssl.create_default_context(
            ssl.Purpose.CLIENT_AUTH, cafile=str(config.ca_file) if config.ca_file else None
        )
        context.load_cert_chain(config.cert_file, config.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"TLS on the orders port: {exc}") from None
    if config.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def allowed(address: str, networks: list[str]) -> bool:
    """Whether a peer's address is in one of ``networks`` (any address when empty)."""
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(network, strict=False) for network in networks)
