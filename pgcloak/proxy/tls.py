"""TLS contexts for the two legs of a session.

The client leg is terminated here with the configured certificate. The upstream
leg follows libpq's sslmode semantics so operators can reuse what they know.
"""

from __future__ import annotations

import ssl

from pgcloak.config import Config, Upstream

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def client_context(config: Config) -> ssl.SSLContext | None:
    """Server-side context for clients, or None when no certificate is set."""
    if not config.tls_cert or not config.tls_key:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.tls_cert, config.tls_key)
    # libpq >= 17 offers ALPN "postgresql"; answering it keeps such clients happy.
    ctx.set_alpn_protocols(["postgresql"])
    return ctx


def upstream_context(up: Upstream) -> ssl.SSLContext | None:
    """Client-side context for the upstream, per sslmode; None means plaintext."""
    if up.sslmode in ("disable", "allow") or up.host.startswith("/"):
        # "allow" starts in plaintext, as libpq does; a socket path needs no TLS.
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if up.sslmode in ("verify-ca", "verify-full"):
        ctx.check_hostname = up.sslmode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
        if up.sslrootcert:
            ctx.load_verify_locations(up.sslrootcert)
        else:
            ctx.load_default_certs()
    else:
        # prefer/require: encrypt but, like libpq, do not verify the peer.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if up.sslcert:
        ctx.load_cert_chain(up.sslcert, up.sslkey)
    return ctx


def upstream_requires_tls(up: Upstream) -> bool:
    return up.sslmode in ("require", "verify-ca", "verify-full")
