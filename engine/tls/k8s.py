"""Kubernetes templates (``infra/tls/mtls-config.yaml``, ``infra/tls/cert-manager.yaml``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml

from ..atomic_file import write_atomically
from .policy import (
    CA_VALIDITY_DAYS,
    RENEWAL_FRACTION,
    SERVICE_VALIDITY_DAYS,
    TLS12_CIPHERS,
    TLS13_CIPHERSUITES,
    PathLike,
)


def _hours(days: float) -> str:
    return f"{round(days * 24)}h"


def _renew_before(days: float) -> str:
    return f"{int(days * 24 * (1 - RENEWAL_FRACTION))}h"  # 34 % of 8760h = 2978h


def mtls_config_yaml(namespace: str = "engine", name: str = "engine-mtls-config",
                     mount_path: str = "/etc/engine/tls", istio: bool = False) -> str:
    """YAML for ``infra/tls/mtls-config.yaml``: a ConfigMap with the TLS policy
    (and an Istio ``PeerAuthentication`` in STRICT mode if ``istio``)."""
    docs: list[dict] = [{
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {
            "TLS_MIN_VERSION": "TLSv1.2", "TLS_MAX_VERSION": "TLSv1.3",
            "TLS13_CIPHERSUITES": ":".join(TLS13_CIPHERSUITES),
            "TLS12_CIPHERS": ":".join(TLS12_CIPHERS),
            "MTLS_MODE": "STRICT", "CRL_CHECK": "leaf",
            "TLS_CERT_FILE": f"{mount_path}/tls.crt", "TLS_KEY_FILE": f"{mount_path}/tls.key",
            "TLS_CA_FILE": f"{mount_path}/ca.crt",
            "CERT_RENEWAL_FRACTION": str(RENEWAL_FRACTION),
            "SERVICE_CERT_DURATION": _hours(SERVICE_VALIDITY_DAYS),
            "CA_CERT_DURATION": _hours(CA_VALIDITY_DAYS),
        },
    }]
    if istio:
        docs.append({"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
                     "metadata": {"name": "default", "namespace": namespace},
                     "spec": {"mtls": {"mode": "STRICT"}}})
    return yaml.safe_dump_all(docs, sort_keys=False)


def cert_manager_yaml(services: Sequence[tuple[str, Sequence[str]]] = (("engine", ("engine",)),),
                      namespace: str = "engine", ca_name: str = "engine-root-ca",
                      acme_email: str | None = None,
                      acme_server: str = "https://acme-v02.api.letsencrypt.org/directory") -> str:
    """YAML for ``infra/tls/cert-manager.yaml`` (cert-manager.io/v1).

    Documents: SelfSigned ``Issuer`` -> CA ``Certificate`` (ECDSA P-384, 87600h)
    -> CA ``Issuer`` (``spec.ca.secretName``) -> one service ``Certificate`` per
    ``(name, dns_names)`` (ECDSA P-256, 8760h, renewBefore 2978h = renewal at
    66 %); plus an ACME ``ClusterIssuer`` for public endpoints if ``acme_email``.
    """
    group = "cert-manager.io"
    meta = lambda n: {"name": n, "namespace": namespace}  # noqa: E731
    docs: list[dict] = [
        {"apiVersion": f"{group}/v1", "kind": "Issuer", "metadata": meta(f"{ca_name}-bootstrap"),
         "spec": {"selfSigned": {}}},
        {"apiVersion": f"{group}/v1", "kind": "Certificate", "metadata": meta(ca_name),
         "spec": {"isCA": True, "commonName": ca_name, "secretName": ca_name,
                  "duration": _hours(CA_VALIDITY_DAYS), "renewBefore": _renew_before(CA_VALIDITY_DAYS),
                  "privateKey": {"algorithm": "ECDSA", "size": 384, "rotationPolicy": "Always"},
                  "usages": ["cert sign", "crl sign", "digital signature"],
                  "issuerRef": {"name": f"{ca_name}-bootstrap", "kind": "Issuer", "group": group}}},
        {"apiVersion": f"{group}/v1", "kind": "Issuer", "metadata": meta(f"{ca_name}-issuer"),
         "spec": {"ca": {"secretName": ca_name}}},
    ]
    for svc, dns in services:
        docs.append({
            "apiVersion": f"{group}/v1", "kind": "Certificate", "metadata": meta(f"{svc}-tls"),
            "spec": {"secretName": f"{svc}-tls", "commonName": svc,
                     "duration": _hours(SERVICE_VALIDITY_DAYS),
                     "renewBefore": _renew_before(SERVICE_VALIDITY_DAYS),
                     "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                     "dnsNames": list(dns),
                     "usages": ["server auth", "client auth", "digital signature"],
                     "issuerRef": {"name": f"{ca_name}-issuer", "kind": "Issuer", "group": group}}})
    if acme_email:
        docs.append({
            "apiVersion": f"{group}/v1", "kind": "ClusterIssuer", "metadata": {"name": "public-acme"},
            "spec": {"acme": {"server": acme_server, "email": acme_email,
                              "privateKeySecretRef": {"name": "public-acme-account-key"},
                              "solvers": [{"http01": {"ingress": {"ingressClassName": "nginx"}}}]}}})
    return yaml.safe_dump_all(docs, sort_keys=False)


def write_k8s_templates(directory: PathLike, **kwargs) -> tuple[Path, Path]:
    """Write ``mtls-config.yaml`` and ``cert-manager.yaml`` into ``directory``
    (e.g. ``infra/tls``) atomically.

    Args:
        directory: output directory (created if missing).
        **kwargs: ``namespace`` (both), ``services``/``acme_email`` (cert-manager),
            ``istio`` (mtls-config).
    Returns:
        ``(mtls_config_path, cert_manager_path)``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ns = kwargs.get("namespace", "engine")
    mtls = mtls_config_yaml(namespace=ns, istio=kwargs.get("istio", False))
    cm = cert_manager_yaml(services=kwargs.get("services", (("engine", ("engine",)),)),
                           namespace=ns, acme_email=kwargs.get("acme_email"))
    paths = directory / "mtls-config.yaml", directory / "cert-manager.yaml"
    for path, text in zip(paths, (mtls, cm)):
        write_atomically(path, text.encode(), mode=0o644)
    return paths
