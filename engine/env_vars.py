"""Every environment variable the engine reads, in one table: its name, what it means and its
default. ``crypto-engine env`` prints it, ``crypto-engine --help`` names it, and
docs/environment.md is generated from it (``python -m engine.env_vars > docs/environment.md``);
tests/test_cli_operators.py fails when the code reads a variable that is not here or when the
document differs. Importing this module imports nothing else of the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VARIABLES", "Variable", "markdown"]


@dataclass(frozen=True)
class Variable:
    name: str
    meaning: str
    default: str
    group: str


_KEYS, _VAULT, _ROTATION, _ENGINE, _TESTS = (
    "Keys", "Vault / OpenBao (when VAULT_ENABLED)", "Rotation and audit", "Engine", "Test helpers")

VARIABLES: tuple[Variable, ...] = (
    Variable("ENCRYPTION_MASTER_KEY", "the master key the environment provider derives each "
             "version's key from (at least 32 bytes); a secret", "none: required unless "
             "VAULT_ENABLED", _KEYS),
    Variable("ENCRYPTION_KDF_ITERATIONS", "PBKDF2-SHA512 iterations for new key versions",
             "100000", _KEYS),
    Variable("ENCRYPTION_ALGORITHM", "algorithm of key versions created from now on: "
             "aes-256-gcm or xaes-256-gcm", "aes-256-gcm", _KEYS),
    Variable("ENGINE_KEY_STATE_FILE", "the environment provider's version list (JSON)",
             "$ENGINE_STATE_DIR/keys.json", _KEYS),
    Variable("ENGINE_STATE_DIR", "directory of the engine's local state (key versions, "
             "rotation canaries)", "$XDG_STATE_HOME/engine, else ~/.local/state/engine",
             _KEYS),
    Variable("XDG_STATE_HOME", "base of the default state directory", "~/.local/state", _KEYS),
    Variable("VAULT_ENABLED", "take keys from Vault/OpenBao (true/false)", "false", _VAULT),
    Variable("VAULT_ADDR", "Vault's URL; several nodes separated by commas", "none: required",
             _VAULT),
    Variable("VAULT_TOKEN", "a Vault token (a secret); else AppRole, Kubernetes or a "
             "certificate logs in", "none", _VAULT),
    Variable("VAULT_ROLE_ID", "AppRole role id (with VAULT_SECRET_ID)", "none", _VAULT),
    Variable("VAULT_SECRET_ID", "AppRole secret id (a secret)", "none", _VAULT),
    Variable("VAULT_K8S_ROLE", "Kubernetes auth role", "none", _VAULT),
    Variable("VAULT_K8S_JWT_PATH", "the service-account token file for Kubernetes auth",
             "/var/run/secrets/kubernetes.io/serviceaccount/token", _VAULT),
    Variable("VAULT_CLIENT_CERT", "client certificate (mTLS; with VAULT_CERT_ROLE also the "
             "login); its expiry is exported as a metric", "none", _VAULT),
    Variable("VAULT_CLIENT_KEY", "the client certificate's private key", "none", _VAULT),
    Variable("VAULT_CERT_ROLE", "cert auth role: log in with VAULT_CLIENT_CERT", "none", _VAULT),
    Variable("VAULT_CACERT", "CA bundle that verifies Vault's certificate", "the system's",
             _VAULT),
    Variable("VAULT_SKIP_VERIFY", "do not verify Vault's certificate (tests only)", "false",
             _VAULT),
    Variable("VAULT_NAMESPACE", "Vault Enterprise / OpenBao namespace", "none", _VAULT),
    Variable("VAULT_TIMEOUT", "seconds per request", "5", _VAULT),
    Variable("VAULT_RETRIES", "retries of a failed request", "3", _VAULT),
    Variable("VAULT_DEADLINE", "seconds a call keeps trying across nodes",
             "none; 15 with several nodes", _VAULT),
    Variable("VAULT_TRANSIT_KEY", "the Transit key that wraps the data keys",
             "intelliflow-data-key", _VAULT),
    Variable("VAULT_TRANSIT_MOUNT", "the Transit engine's mount", "transit", _VAULT),
    Variable("VAULT_KV_MOUNT", "the KV v2 mount holding the wrapped data keys", "secret", _VAULT),
    Variable("VAULT_KV_PATH", "path of the wrapped data keys in the KV mount",
             "intelliflow/encryption", _VAULT),
    Variable("VAULT_SECRETS_PATH", "folder of the application's own secrets "
             "(VaultSecrets.from_environment) in the KV mount", "engine", _VAULT),
    Variable("VAULT_SECRET_NAMES", "the secret names the application may read and write, "
             "separated by commas (others are refused)", "any name", _VAULT),
    Variable("VAULT_KEY_CACHE_TTL", "seconds an unwrapped data key is cached", "300", _VAULT),
    Variable("KEY_ROTATION_ENABLED", "whether rotate --if-needed and the scheduler rotate",
             "true", _ROTATION),
    Variable("KEY_ROTATION_INTERVAL_DAYS", "days between rotations", "30", _ROTATION),
    Variable("KEY_RETENTION_VERSIONS", "versions kept able to decrypt; older ones are "
             "deprecated", "5", _ROTATION),
    Variable("KEY_ROTATION_WEBHOOK", "URL notified (POST JSON) after each rotation", "none",
             _ROTATION),
    Variable("ENGINE_AUDIT_LOG", "path of the HMAC-chained audit log (turns the audit trail on)",
             "none: no audit trail", _ROTATION),
    Variable("ENGINE_BACKEND", "native backend: ipsec-mb or openssl", "auto: the fastest",
             _ENGINE),
    Variable("ENGINE_TLS_NO_CTYPES", "set: TLS 1.3 suites are not set through ctypes "
             "(OpenSSL's defaults apply)", "unset", _ENGINE),
    Variable("BAO_BINARY", "the OpenBao server engine.testing starts", "bao on PATH", _TESTS),
    Variable("PG_BIN", "PostgreSQL's bin directory for engine.testing", "from pg_config, "
             "else /usr/lib/postgresql/*/bin", _TESTS),
    Variable("PATH", "where engine.testing finds bao and initdb; passed on to the PostgreSQL "
             "server it starts", "/usr/bin:/bin when unset", _TESTS),
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """docs/environment.md: the table, grouped."""
    lines = ["# Environment variables", "",
             "Every variable the engine reads (generated from `engine/env_vars.py` by "
             "`python -m engine.env_vars`; a test fails when they differ or when the code reads "
             "one that is not listed). `crypto-engine env` prints the same table.", ""]
    groups = dict.fromkeys(v.group for v in VARIABLES)
    for group in groups:
        lines += [f"## {group}", "", "| variable | meaning | default |", "| --- | --- | --- |"]
        lines += [f"| `{v.name}` | {_cell(v.meaning)} | {_cell(v.default)} |"
                  for v in VARIABLES if v.group == group]
        lines.append("")
    return "\n".join(lines)


def text() -> str:
    """The table for a terminal (``crypto-engine env``)."""
    width = max(len(v.name) for v in VARIABLES)
    out = []
    for group in dict.fromkeys(v.group for v in VARIABLES):
        out.append(f"{group}:")
        out += [f"  {v.name:<{width}}  {v.meaning} (default: {v.default})"
                for v in VARIABLES if v.group == group]
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(), end="")
