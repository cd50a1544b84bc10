"""Security policy constants shared by the whole package (single source of truth)."""
from __future__ import annotations

import os
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]
Passphrase = Union[str, bytes]

TLS13_CIPHERSUITES = ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
TLS12_CIPHERS = ("ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384")
CA_VALIDITY_DAYS = 3650
SERVICE_VALIDITY_DAYS = 365
RENEWAL_FRACTION = 0.66
CRL_VALIDITY_DAYS = 30
CA_CERT_FILE, CA_KEY_FILE, CRL_FILE, INDEX_FILE = "ca.pem", "ca-key.pem", "crl.pem", "index.json"
