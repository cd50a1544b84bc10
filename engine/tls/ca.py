"""The internal certificate authority: issue, sign CSRs, renew, revoke (CRL) and OCSP."""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..atomic_file import write_atomically
from ._files import _install_pair, _safe_name, _utcnow
from .certs import (
    _check_pair,
    _key_pem,
    _load_private_key,
    _passphrase_bytes,
    _san,
    load_certificate,
    needs_renewal,
)
from .errors import CertificateError, RevocationError, TLSError
from .policy import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CA_VALIDITY_DAYS,
    CRL_FILE,
    CRL_VALIDITY_DAYS,
    INDEX_FILE,
    SERVICE_VALIDITY_DAYS,
    Passphrase,
    PathLike,
)


class CertificateAuthority:
    """Internal ECDSA P-384 certificate authority stored in a directory.

    Files: ``ca.pem`` (certificate), ``ca-key.pem`` (PKCS#8, encrypted with the
    passphrase, mode 0600), ``crl.pem`` (current CRL), ``index.json`` (issued
    serials and their status) and ``issued/<name>/`` (service pairs).
    """

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.directory = directory
        self._cert = cert
        self._key = key

    def __repr__(self) -> str:  # never show key material
        return f"CertificateAuthority(directory={str(self.directory)!r})"

    @property
    def cert_path(self) -> Path:
        """Path of the CA certificate (PEM); use it as ``ca_path``."""
        return self.directory / CA_CERT_FILE

    @property
    def key_path(self) -> Path:
        """Path of the encrypted CA private key."""
        return self.directory / CA_KEY_FILE

    @property
    def crl_path(self) -> Path:
        """Path of the current CRL (PEM)."""
        return self.directory / CRL_FILE

    @property
    def index_path(self) -> Path:
        return self.directory / INDEX_FILE

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    # ---- construction
    @classmethod
    def create(cls, directory: PathLike, passphrase: Passphrase, *,
               common_name: str = "engine internal root CA",
               days: float = CA_VALIDITY_DAYS, now: _dt.datetime | None = None) -> "CertificateAuthority":
        """Create a new root CA (ECDSA P-384, 10 years) in ``directory``.

        Args:
            directory: CA directory (created with mode 0700 if missing).
            passphrase: encrypts the CA key at rest (str or bytes, non-empty).
            common_name: subject CN of the root certificate.
            days: validity in days.
            now: start of validity (default: now).
        Returns:
            The new CA, with an empty CRL and index written.
        Raises:
            TLSError: a CA already exists in ``directory``.
            PassphraseError: empty or invalid passphrase.
        """
        pw = _passphrase_bytes(passphrase)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if (directory / CA_KEY_FILE).exists() or (directory / CA_CERT_FILE).exists():
            raise TLSError(f"a CA already exists in {directory}")
        start = _utcnow(now)
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(key, hashes.SHA384())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.BestAvailableEncryption(pw))
        write_atomically(directory / CA_KEY_FILE, key_pem)
        write_atomically(directory / CA_CERT_FILE, cert.public_bytes(serialization.Encoding.PEM),
                         mode=0o644)
        ca = cls(directory, cert, key)
        ca._write_index({"crl_number": 0, "certificates": {}})
        ca.refresh_crl()  # CRL validity is always based on the real clock
        return ca

    @classmethod
    def load(cls, directory: PathLike, passphrase: Passphrase) -> "CertificateAuthority":
        """Load an existing CA (recreating a missing index or CRL).

        Args:
            directory: CA directory written by :meth:`create`.
            passphrase: the CA key passphrase (str or bytes).
        Returns:
            The loaded CA.
        Raises:
            PassphraseError: wrong passphrase.
            CertificateError: missing/corrupt files, or key not matching the CA certificate.
        """
        pw = _passphrase_bytes(passphrase)
        directory = Path(directory)
        cert = load_certificate(directory / CA_CERT_FILE)
        key = _load_private_key(directory / CA_KEY_FILE, pw)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError("CA key is not an ECDSA key")
        _check_pair(cert, key, directory / CA_CERT_FILE)
        ca = cls(directory, cert, key)
        if not ca.index_path.exists():
            ca._write_index({"crl_number": 0, "certificates": {}})
        if not ca.crl_path.exists():
            ca.refresh_crl()
        return ca

    # ---- index
    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        """Exclusive advisory lock serialising index/CRL updates across processes."""
        fd = os.open(self.directory / ".index.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read_index(self) -> dict:
        try:
            return json.loads(self.index_path.read_text())
        except (OSError, ValueError) as exc:
            raise TLSError(f"cannot read CA index {self.index_path}: {exc}") from None

    def _write_index(self, index: dict) -> None:
        write_atomically(self.index_path, json.dumps(index, indent=2, sort_keys=True).encode())

    def _record(self, cert: x509.Certificate) -> None:
        with self._index_lock():
            index = self._read_index()
            index["certificates"][str(cert.serial_number)] = {
                "subject": cert.subject.rfc4514_string(),
                "not_before": cert.not_valid_before_utc.isoformat(),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "status": "valid",
            }
            self._write_index(index)

    # ---- issuing
    def _sign(self, subject: x509.Name, public_key, san: x509.SubjectAlternativeName | None,
              days: float, now: _dt.datetime | None) -> x509.Certificate:
        start = _utcnow(now)
        ca_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self._cert.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        cert = builder.sign(self._key, hashes.SHA384())
        self._record(cert)
        return cert

    def issue(self, common_name: str, dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = (),
              days: float = SERVICE_VALIDITY_DAYS, *, now: _dt.datetime | None = None,
              directory: PathLike | None = None) -> tuple[Path, Path]:
        """Issue a service certificate (new ECDSA P-256 key) in one step.

        Args:
            common_name: subject CN (also the DNS SAN when no SAN is given).
            dns_names: DNS subject alternative names.
            ip_addresses: IP subject alternative names.
            days: validity in days (fractions allowed).
            now: start of validity (default: now); for tests/backdating.
            directory: where to store the pair (default ``<ca>/issued/<cn>``).
        Returns:
            ``(cert_path, key_path)``; see :func:`certificate_serial`.
        Raises:
            CertificateError: invalid IP address.
        """
        target = Path(directory) if directory else self.directory / "issued" / _safe_name(common_name)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = self._sign(subject, key.public_key(), _san(common_name, dns_names, ip_addresses), days, now)
        cert_path, key_path = target / "cert.pem", target / "key.pem"
        _install_pair(cert_path, key_path, cert.public_bytes(serialization.Encoding.PEM),
                      _key_pem(key), f"{cert.serial_number:x}")
        return cert_path, key_path

    def sign_csr(self, csr_pem: bytes, days: float = SERVICE_VALIDITY_DAYS, *,
                 now: _dt.datetime | None = None) -> bytes:
        """Sign a PEM CSR; the CA sets the extensions, only CN and SANs are taken.

        Args:
            csr_pem: PEM-encoded PKCS#10 request.
            days: validity in days.
            now: start of validity (default: now).
        Returns:
            The signed certificate, PEM.
        Raises:
            CertificateError: corrupt CSR, bad self-signature or weak key.
        """
        try:
            csr = x509.load_pem_x509_csr(bytes(csr_pem))
        except ValueError:
            raise CertificateError("corrupt or non-PEM certificate signing request") from None
        if not csr.is_signature_valid:
            raise CertificateError("CSR signature is invalid")
        pub = csr.public_key()
        ok = (isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name in ("secp256r1", "secp384r1")) \
            or (isinstance(pub, rsa.RSAPublicKey) and pub.key_size >= 2048)
        if not ok:
            raise CertificateError("CSR key must be ECDSA P-256/P-384 or RSA >= 2048")
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not cns:
            raise CertificateError("CSR has no common name")
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = _san(str(cns[0].value), (), ())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(cns[0].value))])
        return self._sign(subject, pub, san, days, now).public_bytes(serialization.Encoding.PEM)

    def _verify_issued(self, cert: x509.Certificate, cert_path: PathLike) -> None:
        try:
            cert.verify_directly_issued_by(self._cert)
        except (ValueError, TypeError, InvalidSignature):
            raise CertificateError(f"{os.fspath(cert_path)} was not issued by this CA") from None

    def renew(self, cert_path: PathLike, key_path: PathLike | None = None,
              days: float = SERVICE_VALIDITY_DAYS, *, now: _dt.datetime | None = None) -> tuple[Path, Path]:
        """Re-issue a certificate with the same CN and SANs and a fresh P-256 key.

        The old pair stays in place until the new pair is committed by a single
        atomic rename (see module docstring); an interruption at any point leaves
        either the old or the new, always matching, pair.

        Args:
            cert_path: current certificate (plain file or managed symlink).
            key_path: its key (default: ``key.pem`` next to the certificate).
            days: validity of the new certificate.
            now: start of validity (default: now).
        Returns:
            ``(cert_path, key_path)`` - the same paths, now holding the new pair.
        Raises:
            CertificateError: corrupt files, or certificate not issued by this CA.
        """
        cert_path = Path(cert_path)
        key_path = Path(key_path) if key_path is not None else cert_path.with_name("key.pem")
        old = load_certificate(cert_path)
        self._verify_issued(old, cert_path)
        try:
            san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(old.subject, key.public_key(), san, days, now)
        _install_pair(cert_path, key_path, cert.public_bytes(serialization.Encoding.PEM),
                      _key_pem(key), f"{cert.serial_number:x}")
        return cert_path, key_path

    def renew_if_needed(self, cert_path: PathLike, key_path: PathLike | None = None,
                        days: float = SERVICE_VALIDITY_DAYS, *, now: _dt.datetime | None = None) -> bool:
        """Renew when :func:`needs_renewal` says so (66 % of lifetime); for a periodic job.

        Returns:
            True if the pair was renewed.
        Raises:
            CertificateError: as :meth:`renew`.
        """
        if not needs_renewal(cert_path, now=now):
            return False
        self.renew(cert_path, key_path, days, now=now)
        return True

    # ---- revocation
    def revoke(self, serial: int, *, reason: x509.ReasonFlags = x509.ReasonFlags.unspecified,
               now: _dt.datetime | None = None) -> None:
        """Revoke an issued certificate and re-sign the CRL.

        Revoking an already revoked serial is a no-op (idempotent).

        Args:
            serial: certificate serial number (int).
            reason: CRL reason code.
            now: revocation time (default: now).
        Raises:
            RevocationError: the serial was never issued by this CA.
        """
        with self._index_lock():
            index = self._read_index()
            entry = index["certificates"].get(str(int(serial)))
            if entry is None:
                raise RevocationError(f"serial {int(serial):#x} was not issued by this CA")
            if entry["status"] != "revoked":
                entry.update(status="revoked", revoked_at=_utcnow(now).isoformat(), reason=reason.value)
                self._write_index(index)
        self.refresh_crl()

    def is_revoked(self, serial: int) -> bool:
        """True if ``serial`` is recorded as revoked in the CA index."""
        entry = self._read_index()["certificates"].get(str(int(serial)))
        return bool(entry and entry["status"] == "revoked")

    def refresh_crl(self, *, days: float = CRL_VALIDITY_DAYS, now: _dt.datetime | None = None) -> Path:
        """Re-sign and atomically write the CRL from the index.

        Call it periodically (well before nextUpdate) and rebuild SSL contexts:
        OpenSSL rejects every peer once a loaded CRL has expired.

        Args:
            days: nextUpdate - lastUpdate.
            now: lastUpdate (default: now).
        Returns:
            ``crl_path``.
        """
        with self._index_lock():
            index = self._read_index()
            index["crl_number"] = int(index.get("crl_number", 0)) + 1
            start = _utcnow(now)
            ca_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            builder = (
                x509.CertificateRevocationListBuilder().issuer_name(self._cert.subject)
                .last_update(start).next_update(start + _dt.timedelta(days=days))
                .add_extension(x509.CRLNumber(index["crl_number"]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                               critical=False)
            )
            for serial, entry in sorted(index["certificates"].items()):
                if entry["status"] != "revoked":
                    continue
                revoked = (x509.RevokedCertificateBuilder().serial_number(int(serial))
                           .revocation_date(_dt.datetime.fromisoformat(entry["revoked_at"])))
                if entry.get("reason", "unspecified") != "unspecified":
                    revoked = revoked.add_extension(x509.CRLReason(x509.ReasonFlags(entry["reason"])),
                                                    critical=False)
                builder = builder.add_revoked_certificate(revoked.build())
            crl = builder.sign(self._key, hashes.SHA384())
            write_atomically(self.crl_path, crl.public_bytes(serialization.Encoding.PEM),
                             mode=0o644)
            self._write_index(index)
        return self.crl_path

    def ocsp_response(self, cert_path: PathLike, status: str | None = None, *,
                      now: _dt.datetime | None = None, validity_hours: float = 24) -> bytes:
        """Build a signed OCSP response (DER) for a certificate.

        Args:
            cert_path: the certificate the response is about.
            status: ``"good"``, ``"revoked"`` or ``"unknown"``; default: from the index.
            now: thisUpdate (default: now).
            validity_hours: nextUpdate - thisUpdate.
        Returns:
            DER-encoded ``OCSPResponse`` (responder = the CA itself).
        Raises:
            CertificateError: corrupt certificate or not issued by this CA.
            ValueError: unknown ``status`` value.
        """
        cert = load_certificate(cert_path)
        self._verify_issued(cert, cert_path)
        entry = self._read_index()["certificates"].get(str(cert.serial_number))
        if status is None:
            status = "unknown" if entry is None else ("revoked" if entry["status"] == "revoked" else "good")
        statuses = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
                    "unknown": ocsp.OCSPCertStatus.UNKNOWN}
        if status not in statuses:
            raise ValueError(f"status must be one of {sorted(statuses)}")
        this_update = _utcnow(now)
        rev_time = rev_reason = None
        if status == "revoked":
            rev_time = (_dt.datetime.fromisoformat(entry["revoked_at"])
                        if entry and entry.get("revoked_at") else this_update)
            rev_reason = x509.ReasonFlags((entry or {}).get("reason", "unspecified"))
        response = (
            ocsp.OCSPResponseBuilder()
            .add_response(cert=cert, issuer=self._cert, algorithm=hashes.SHA256(),
                          cert_status=statuses[status], this_update=this_update,
                          next_update=this_update + _dt.timedelta(hours=validity_hours),
                          revocation_time=rev_time, revocation_reason=rev_reason)
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self._cert)
            .sign(self._key, hashes.SHA384())
        )
        return response.public_bytes(serialization.Encoding.DER)
