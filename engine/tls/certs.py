"""Loading and inspecting certificates/keys, renewal timing and CSRs."""
from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ._files import _utcnow
from .errors import CertificateError, PassphraseError
from .policy import RENEWAL_FRACTION, Passphrase, PathLike


def _passphrase_bytes(passphrase: Passphrase) -> bytes:
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    if not isinstance(passphrase, (bytes, bytearray)) or not passphrase:
        raise PassphraseError("a non-empty passphrase (str or bytes) is required")
    return bytes(passphrase)


def _read(path: PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {what} {os.fspath(path)!s}: {exc.strerror}") from None


def load_certificate(cert_path: PathLike) -> x509.Certificate:
    """Load the first certificate of a PEM file.

    Args:
        cert_path: PEM certificate file.
    Returns:
        The parsed certificate.
    Raises:
        CertificateError: unreadable file or corrupt PEM.
    """
    data = _read(cert_path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertificateError(f"corrupt or non-PEM certificate: {os.fspath(cert_path)}") from None


def _load_private_key(key_path: PathLike, password: bytes | None = None):
    data = _read(key_path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=password)
    except TypeError:  # encrypted but no password, or password on a clear key
        raise PassphraseError(f"private key {os.fspath(key_path)} passphrase mismatch") from None
    except ValueError:
        if password is not None and b"ENCRYPTED" in data:
            raise PassphraseError(f"wrong passphrase for private key {os.fspath(key_path)}") from None
        raise CertificateError(f"corrupt or non-PEM private key: {os.fspath(key_path)}") from None
    except Exception:  # e.g. UnsupportedAlgorithm
        raise CertificateError(f"unsupported private key: {os.fspath(key_path)}") from None


def _check_pair(cert: x509.Certificate, key, cert_path: PathLike) -> None:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*fmt) != key.public_key().public_bytes(*fmt):
        raise CertificateError(f"private key does not match certificate {os.fspath(cert_path)}")


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def certificate_serial(cert_path: PathLike) -> int:
    """Return the serial number of a PEM certificate.

    Raises:
        CertificateError: unreadable or corrupt certificate.
    """
    return load_certificate(cert_path).serial_number


def certificate_subject(cert_path: PathLike) -> str:
    """Return the certificate subject as an RFC 4514 string (metric label).

    Raises:
        CertificateError: unreadable or corrupt certificate.
    """
    return load_certificate(cert_path).subject.rfc4514_string()


def certificate_expiry_seconds(cert_path: PathLike, now: _dt.datetime | None = None) -> float:
    """Seconds until the certificate's notAfter (negative once expired).

    Args:
        cert_path: PEM certificate file.
        now: reference time (default: current UTC time; naive means UTC).
    Returns:
        ``notAfter - now`` in seconds, as float.
    Raises:
        CertificateError: unreadable or corrupt certificate.
    """
    return (load_certificate(cert_path).not_valid_after_utc - _utcnow(now)).total_seconds()


def renewal_time(cert_path: PathLike) -> _dt.datetime:
    """Return the instant at which 66 % of the certificate lifetime has elapsed.

    Raises:
        CertificateError: unreadable or corrupt certificate.
    """
    cert = load_certificate(cert_path)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * RENEWAL_FRACTION


def needs_renewal(cert_path: PathLike, now: _dt.datetime | None = None) -> bool:
    """True once at least 66 % of the certificate lifetime has passed.

    Args:
        cert_path: PEM certificate file.
        now: reference time (default: current UTC time).
    Returns:
        Whether the certificate should be renewed.
    Raises:
        CertificateError: unreadable or corrupt certificate.
    """
    return _utcnow(now) >= renewal_time(cert_path)


def make_csr(common_name: str, dns_names: Iterable[str] = (),
             ip_addresses: Iterable[str] = ()) -> tuple[bytes, bytes]:
    """Create a P-256 key and a CSR for it (for :meth:`CertificateAuthority.sign_csr`).

    Returns:
        ``(csr_pem, key_pem)``; keep ``key_pem`` secret (write it with mode 0600).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
    san = _san(common_name, dns_names, ip_addresses)
    csr = builder.add_extension(san, critical=False).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _san(common_name: str, dns_names: Iterable[str], ips: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    try:
        names += [x509.IPAddress(ipaddress.ip_address(str(i))) for i in ips]
    except ValueError as exc:
        raise CertificateError(f"invalid IP address: {exc}") from None
    if not names:  # hostname verification only uses SANs
        names = [x509.DNSName(common_name)]
    return x509.SubjectAlternativeName(names)
