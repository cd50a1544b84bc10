"""TLS / mTLS certificate toolkit: internal CA, service certificates, renewal,
revocation (CRL + OCSP), hardened ``ssl.SSLContext`` factories and
Kubernetes (cert-manager) templates.

Policy (from the "Data in Transit" / "Certificate Security" requirements):

* CA: ECDSA P-384, 10 years; services: ECDSA P-256, 1 year.
* Renewal once 66 % of the lifetime has elapsed.
* TLS 1.2 minimum, TLS 1.3 preferred.  TLS 1.3 suites
  TLS_AES_256_GCM_SHA384 and TLS_CHACHA20_POLY1305_SHA256; TLS 1.2 suites
  ECDHE-ECDSA/RSA-AES256-GCM-SHA384 only.
* Strict mTLS: client certificates required and verified against CA + CRL.

Issued certificate/key pairs are stored in an "atomic pair" layout (the same
idea as Kubernetes' secret volumes): ``cert.pem`` and ``key.pem`` are symlinks
into ``..cert.data``, itself a symlink to a version directory
``..cert.v-<serial>`` holding both files.  Replacing the pair is one
``os.replace`` of the ``..cert.data`` link, so readers never see a certificate
with the wrong key, whatever step is interrupted.  POSIX only.
"""
from __future__ import annotations

from .ca import CertificateAuthority
from .certs import (
                    certificate_expiry_seconds,
                    certificate_serial,
                    certificate_subject,
                    load_certificate,
                    make_csr,
                    needs_renewal,
                    renewal_time,
)
from .context import client_context, server_context, set_tls13_ciphersuites, tls13_ciphersuites
from .errors import CertificateError, PassphraseError, RevocationError, TLSError
from .k8s import cert_manager_yaml, mtls_config_yaml, write_k8s_templates
from .policy import (
                    CA_VALIDITY_DAYS,
                    CRL_VALIDITY_DAYS,
                    RENEWAL_FRACTION,
                    SERVICE_VALIDITY_DAYS,
                    TLS12_CIPHERS,
                    TLS13_CIPHERSUITES,
)

__all__ = [
    "TLSError", "CertificateError", "PassphraseError", "RevocationError",
    "CertificateAuthority", "server_context", "client_context",
    "needs_renewal", "renewal_time", "certificate_expiry_seconds", "certificate_subject",
    "certificate_serial", "load_certificate", "make_csr",
    "tls13_ciphersuites", "set_tls13_ciphersuites",
    "mtls_config_yaml", "cert_manager_yaml", "write_k8s_templates",
    "TLS13_CIPHERSUITES", "TLS12_CIPHERS", "CA_VALIDITY_DAYS", "SERVICE_VALIDITY_DAYS",
    "RENEWAL_FRACTION", "CRL_VALIDITY_DAYS",
]
