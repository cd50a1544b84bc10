"""Key rotation: the rotation service and the rotation flow (validate, create, switch, verify, retain).

:meth:`KeyRotationService.rotate_keys` runs these steps in order, each one reported to an
optional observer and written to the audit trail:

1. ``pre_validation``: the provider answers and the current key round-trips a canary;
2. ``generate``: a new key version is created;
3. ``move_pointer``: it becomes the current version (providers do 2 and 3 in one write);
4. ``post_verification``: the new key round-trips, and every retained version still opens the
   canary it sealed when it was created (so a key that changed is caught, not just one that works);
5. ``deprecate``: versions beyond retention go ``decrypt-only`` -> ``deprecated`` (never deleted:
   deleting is :meth:`KeyRotationService.purge`, an explicit call);
6. ``handover``: the re-encryption hook, if any, is told the new version.

A failure at any step puts the pointer and every version's state back as they were, marks the
half-made version ``deprecated`` (data written with it in the meantime stays readable), records
``KEY_ROTATION_FAILED`` and raises :class:`RotationFailed`. Two rotations never run at once: a
file lock serialises threads and processes, or the provider's own lock when it has one (Vault).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from . import audit as audit_events
from .aead import random_bytes
from .atomic_file import write_atomically
from .errors import EngineError, InvalidArgument, InvalidArgumentType, InvalidTag
from .keys.base import (
    GCM_RANDOM_IV_LIMIT,
    KeyLockBusy,
    KeyProvider,
    KeyState,
    KeyVersionInfo,
    usage_limit,
)
from .locks import fork_safe_lock
from .settings import env_flag, env_number
from .webhook import Webhook

__all__ = [
    "KeyRotationService",
    "RotationFailed",
    "RotationInProgress",
    "RotationPolicy",
    "RotationResult",
    "VersionStillInUse",
    "get_key_rotation_service",
]

STEPS = ("pre_validation", "generate", "move_pointer", "post_verification", "deprecate", "handover")


class RotationFailed(EngineError):
    """A rotation step failed; everything was put back as before, unless ``rolled_back`` is
    False (putting it back failed too, e.g. Vault was unreachable: a rerun completes the
    rotation). ``step`` names the step."""

    def __init__(self, step: str, cause: BaseException, *, rolled_back: bool = True) -> None:
        super().__init__(f"key rotation failed at {step}: {type(cause).__name__}: {cause}"
                         + ("" if rolled_back else "; putting things back failed too: run the "
                            "rotation again once the provider answers"))
        self.step = step
        self.rolled_back = rolled_back


class RotationInProgress(EngineError):
    """Another rotation holds the lock (when ``wait=False``)."""


class VersionStillInUse(InvalidArgument):
    """A key version to purge is still named by stored values (an inventory found them).

    Attributes:
        version: the version.
        still_named: (store, column) -> {``readable`` or a failure reason: count}.
    """

    def __init__(self, version: int, still_named: Mapping[tuple[str, str], Mapping[str, int]]
                 ) -> None:
        self.version = version
        self.still_named = {k: dict(v) for k, v in still_named.items()}
        total = sum(sum(v.values()) for v in self.still_named.values())
        unreadable = sum(n for v in self.still_named.values() for k, n in v.items()
                         if k != "readable")
        where = "; ".join(f"{store} {column}: " + ", ".join(
            f"{n} {_PURGE_REASONS.get(k, k)}" for k, n in sorted(counts.items()))
            for (store, column), counts in sorted(self.still_named.items()))
        advice = "re-encrypt the readable ones (crypto-engine reencrypt)"
        if unreadable:
            advice += ("; the others open only with v{v}'s key: find their AAD rule (or key) and "
                       "re-encrypt them, or delete those values yourself").format(v=version)
        super().__init__(f"v{version} is still named by {total} value(s), {unreadable} of them "
                         f"unreadable here: {where}; {advice}, then take a new inventory")


_PURGE_REASONS = {"readable": "readable",
                  "invalid_tag": "failing authentication (another AAD, key or tampered)",
                  "unknown_key_version": "under a version this provider does not have",
                  "malformed": "in a layout the job cannot read (a 12-byte nonce, say)"}


def _still_named(inventories: Any, version: int) -> dict[tuple[str, str], dict[str, int]]:
    """(store, column) -> counts of the values naming ``version``, over every inventory: never
    summed across stores (the same column name in two stores is two entries); the same store
    and column in two inventories keeps the larger count of each kind."""
    left: dict[tuple[str, str], dict[str, int]] = {}
    for inv in inventories:
        for column, counts in inv.still_named(version).items():
            seen = left.setdefault((inv.store, column), {})
            for why, n in counts.items():
                seen[why] = max(seen.get(why, 0), n)
    return left


@dataclass(frozen=True)
class RotationPolicy:
    """When to rotate and how many versions to keep (defaults: 30 days, 5 versions).

    Attributes:
        enabled: ``KEY_ROTATION_ENABLED``; when false, :meth:`is_rotation_needed` is always false.
        interval_days: ``KEY_ROTATION_INTERVAL_DAYS`` (30).
        retention_versions: ``KEY_RETENTION_VERSIONS`` (5): versions that still decrypt,
            the current one included; older ones become deprecated.
        usage_limit: encryptions allowed under one key with random IVs (2**32).
        usage_fraction: rotate once a version has done this fraction of ``usage_limit``.
            Versions of XAES-256-GCM are never rotated for usage (see
            :func:`engine.keys.base.usage_limit`); the interval applies to them as to any.
        webhook: ``KEY_ROTATION_WEBHOOK``: a URL that receives a JSON POST per rotation.
        webhook_timeout, webhook_retries: per attempt timeout and attempts (bounded; never blocks).
    """

    enabled: bool = True
    interval_days: float = 30.0
    retention_versions: int = 5
    usage_limit: int = GCM_RANDOM_IV_LIMIT
    usage_fraction: float = 0.5
    webhook: str | None = None
    webhook_timeout: float = 5.0
    webhook_retries: int = 3

    def __post_init__(self) -> None:
        if self.interval_days <= 0:
            raise InvalidArgument("interval_days must be positive")
        if self.retention_versions < 1:
            raise InvalidArgument("retention_versions must be at least 1")
        if not 0 < self.usage_fraction <= 1:
            raise InvalidArgument("usage_fraction must be in (0, 1]")
        if self.webhook_retries < 1 or self.webhook_timeout <= 0:
            raise InvalidArgument("webhook_retries and webhook_timeout must be positive")

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> "RotationPolicy":
        """The policy from ``KEY_ROTATION_*`` and ``KEY_RETENTION_VERSIONS``.

        Raises:
            InvalidArgument: a value that is not a number or boolean; the message names the variable.
        """
        env = os.environ if env is None else env

        return cls(
            enabled=env_flag(env, "KEY_ROTATION_ENABLED", True),
            interval_days=env_number(env, "KEY_ROTATION_INTERVAL_DAYS", float, 30.0),
            retention_versions=env_number(env, "KEY_RETENTION_VERSIONS", int, 5),
            webhook=env.get("KEY_ROTATION_WEBHOOK") or None,
        )


@dataclass(frozen=True)
class RotationResult:
    """What a rotation did."""

    previous_version: int | None
    new_version: int
    reason: str
    rotated_at: datetime
    deprecated_versions: tuple[int, ...] = ()
    steps: tuple[str, ...] = STEPS


class _CanaryStore:
    """Each version's canary, sealed with that version's key when it was created: a JSON file
    (mode 0600) written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[int, dict[str, str]]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            raise EngineError(f"the canary file {self.path} is corrupt") from None
        return {int(k): v for k, v in raw.items()}

    def save(self, canaries: dict[int, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({str(k): v for k, v in sorted(canaries.items())})
        write_atomically(self.path, data.encode())


def _seal_canary(provider: KeyProvider, version: int) -> dict[str, str]:
    key = provider.get_key(version)
    nonce, secret = random_bytes(key.cipher.NONCE_SIZE), random_bytes(32)
    aad = f"engine-canary:v{version}".encode()
    sealed = key.cipher.encrypt(nonce, secret, aad)
    # The canary's plaintext is random and worthless; only its round trip matters.
    return {"nonce": nonce.hex(), "sealed": sealed.hex(), "check": secret.hex()}


def _open_canary(provider: KeyProvider, version: int, canary: Mapping[str, str]) -> None:
    key = provider.get_key(version)
    aad = f"engine-canary:v{version}".encode()
    plain = key.cipher.decrypt(bytes.fromhex(canary["nonce"]), bytes.fromhex(canary["sealed"]), aad)
    if plain != bytes.fromhex(canary["check"]):
        raise InvalidTag()


def _round_trip(provider: KeyProvider, version: int) -> None:
    _open_canary(provider, version, _seal_canary(provider, version))


class KeyRotationService:
    """Rotates the keys of one provider (the same one the encryption service uses).

    Args:
        provider: any :class:`~engine.keys.KeyProvider` with ``set_state`` and ``set_current``.
        policy: :class:`RotationPolicy` (default: from the environment).
        state_dir: where the rotation lock and canaries live (default: beside the provider's
            state file, else ``$ENGINE_STATE_DIR`` or ``~/.local/state/engine``).
        audit: an :class:`engine.audit.AuditLog` for the rotation events (optional).
        metrics: an :class:`engine.metrics.EngineMetrics` (optional).
        observer: called as ``observer(step, detail)`` before each step; raising aborts the
            rotation (tests inject failures this way).
        on_rotated: the re-encryption hand-over, called with the :class:`RotationResult`.
        clock: seconds since the epoch (tests move time).
    """

    def __init__(self, provider: KeyProvider, policy: RotationPolicy | None = None, *,
                 state_dir: str | os.PathLike[str] | None = None, audit: Any = None,
                 metrics: Any = None, observer: Callable[[str, dict[str, Any]], None] | None = None,
                 on_rotated: Callable[[RotationResult], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if not isinstance(provider, KeyProvider):
            raise InvalidArgumentType(
                f"the provider must be an engine.keys.KeyProvider, not {type(provider).__name__}"
            )
        self.provider = provider
        self.policy = policy if policy is not None else RotationPolicy.from_environment()
        self.state_dir = Path(state_dir) if state_dir is not None else _default_state_dir(provider)
        self.audit = audit
        self.metrics = metrics
        self.observer = observer
        self.on_rotated = on_rotated
        self.clock = clock
        self._canaries = _CanaryStore(self.state_dir / "canaries.json")
        self._thread_lock = fork_safe_lock()
        self._webhook = (Webhook(self.policy.webhook, timeout=self.policy.webhook_timeout,
                                 attempts=self.policy.webhook_retries)
                         if self.policy.webhook else None)
        if metrics is not None:
            metrics.watch_keys(provider)
            metrics.set_rotation_interval(
                self.policy.interval_days * 86400 if self.policy.enabled else None)

    def __repr__(self) -> str:
        return f"<KeyRotationService provider={self.provider!r}>"

    # ---- when ----

    def rotation_reason(self) -> str | None:
        """Why a rotation is due now (``"interval"``, ``"usage"``, ``"no-version"``), or None."""
        if not self.policy.enabled:
            return None
        versions = self.provider.list_versions()
        current = _current_info(self.provider, versions)
        if current is None:
            return "no-version"
        age = timedelta(seconds=self.clock()) - timedelta(seconds=current.created_at.timestamp())
        if age >= timedelta(days=self.policy.interval_days):
            return "interval"
        if (usage_limit(current.algorithm) is not None and self.provider.usage(current.version)
                >= self.policy.usage_fraction * self.policy.usage_limit):
            return "usage"
        return None

    def is_rotation_needed(self) -> bool:
        """True when the interval has passed or the current key nears its usage limit."""
        return self.rotation_reason() is not None

    # ---- how ----

    @contextlib.contextmanager
    def _exclusive(self, wait: bool) -> Iterator[None]:
        if not self._thread_lock.acquire(blocking=wait):
            raise RotationInProgress("another key rotation is running in this process")
        try:
            with contextlib.ExitStack() as stack:
                try:
                    stack.enter_context(self.provider.rotation_lock(wait=wait))
                except KeyLockBusy as exc:
                    busy: str | None = str(exc)
                else:
                    busy = None
                if busy is not None:
                    raise RotationInProgress(busy)
                yield
        finally:
            self._thread_lock.release()

    @contextlib.contextmanager
    def _started(self, reason: str, wait: bool) -> Iterator["_Run"]:
        """The rotation lock, and the state the run starts from. The provider failing here
        (Vault without a leader, say) changed nothing: it is recorded in the audit trail and
        raised as :class:`RotationFailed` at step ``"start"``, like a failed step."""
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self._exclusive(wait))
                before = {i.version: i.state for i in self.provider.list_versions()}
                # no version yet: this run creates the first (asking a Vault provider for its
                # current version would create one first, and this run a second)
                run = _Run(before, _current_version(self.provider) if before else None)
                failure = None
            except (RotationInProgress, KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                failure = exc
            if failure is not None:
                self._record(audit_events.KEY_ROTATION_FAILED, step="start", reason=reason,
                             error=type(failure).__name__)
                if self.metrics is not None:
                    self.metrics.error("key_rotation_failed")
                raise RotationFailed("start", failure) from failure
            yield run

    def _step(self, name: str, **detail: Any) -> None:
        if self.observer is not None:
            self.observer(name, detail)

    def _record(self, event: str, **details: Any) -> None:
        if self.audit is not None:
            self.audit.record(event, **details)

    def rotate_keys(self, *, reason: str = "manual", wait: bool = True) -> RotationResult:
        """Runs the rotation flow once (see the module docstring).

        Args:
            reason: recorded in the audit trail and the result.
            wait: block until another rotation finishes (else raise :class:`RotationInProgress`).

        Returns:
            A :class:`RotationResult` with the previous and the new version.

        Raises:
            RotationFailed: a step failed; the pointer and the versions were put back (see
                ``rolled_back``); or, at step ``"start"``, the provider failed before anything
                changed.
            RotationInProgress: ``wait=False`` and another rotation holds the lock.
        """
        with self._started(reason, wait) as run:
            step = STEPS[0]
            try:
                for step, action in _FLOW:
                    self._step(step, **run.detail(step))
                    action(self, run)
            except BaseException as exc:
                # Putting things back may fail for the reason the step did (Vault lost its
                # leader): the failure is recorded and raised all the same, never replaced.
                try:
                    run.new_version = self._roll_back(run.before, run.previous, run.new_version)
                    undo = {}
                except Exception as undo_exc:
                    undo = {"rollback_error": type(undo_exc).__name__}
                self._record(audit_events.KEY_ROTATION_FAILED, step=step, reason=reason,
                             previous_version=run.previous, failed_version=run.new_version,
                             error=type(exc).__name__, **undo)
                self._notify({"event": audit_events.KEY_ROTATION_FAILED, "step": step,
                              "previous_version": run.previous, "error": type(exc).__name__})
                if self.metrics is not None:
                    self.metrics.rotation_failed(self.clock())
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                raise RotationFailed(step, exc, rolled_back=not undo) from exc
            previous, new_version, deprecated = run.previous, run.created, run.deprecated
            result = RotationResult(previous, new_version, reason,
                                    datetime.fromtimestamp(self.clock(), timezone.utc), deprecated)
            self._record(audit_events.KEY_ROTATION, reason=reason, previous_version=previous,
                         new_version=new_version, deprecated_versions=list(deprecated))
            for version in deprecated:
                self._record(audit_events.KEY_DEPRECATED, version=version)
            if self.metrics is not None:
                self.metrics.rotation_succeeded(self.clock())
                self.metrics.set_versions_active(
                    sum(i.state is not KeyState.DEPRECATED for i in self.provider.list_versions()))
            self._notify({"event": audit_events.KEY_ROTATION, "previous_version": previous,
                          "new_version": new_version, "reason": reason})
        if self.on_rotated is not None:
            self.on_rotated(result)
        return result

    # ---- the steps of the flow, in order (see _FLOW) ----

    def _pre_validation(self, run: "_Run") -> None:
        if run.previous is not None:
            _round_trip(self.provider, run.previous)

    def _generate(self, run: "_Run") -> None:
        run.new_version = self.provider.create_version().version

    def _move_pointer(self, run: "_Run") -> None:
        if _current_version(self.provider) != run.created:
            self.provider.set_current(run.created)

    def _post_verification(self, run: "_Run") -> None:
        run.canaries = self._canaries.load()
        run.canaries[run.created] = _seal_canary(self.provider, run.created)
        _round_trip(self.provider, run.created)
        for version, state in run.before.items():
            if state is not KeyState.DEPRECATED and version in run.canaries:
                _open_canary(self.provider, version, run.canaries[version])

    def _deprecate(self, run: "_Run") -> None:
        run.deprecated = self._apply_retention()
        self._canaries.save(run.canaries)

    def _handover(self, run: "_Run") -> None:
        """Nothing to undo after this point: on_rotated runs once the rotation is recorded."""

    def _apply_retention(self) -> tuple[int, ...]:
        """Versions beyond the newest ``retention_versions`` become deprecated (after passing
        through decrypt-only); returns the versions deprecated now."""
        versions = sorted(self.provider.list_versions(), key=lambda i: i.version, reverse=True)
        current = _current_version(self.provider)
        deprecated = []
        for rank, info in enumerate(versions):
            if info.version == current:
                continue
            if info.state is KeyState.ACTIVE:
                self.provider.set_state(info.version, KeyState.DECRYPT_ONLY)
            if rank >= self.policy.retention_versions and info.state is not KeyState.DEPRECATED:
                self.provider.set_state(info.version, KeyState.DEPRECATED)
                deprecated.append(info.version)
        return tuple(sorted(deprecated))

    def _roll_back(self, before: dict[int, KeyState], previous: int | None,
                   new_version: int | None) -> int | None:
        """Puts the states and the pointer back; returns the version this run created (found
        among the versions when ``generate`` failed after the provider had made it)."""
        if new_version is None:
            made = [i.version for i in self.provider.list_versions() if i.version not in before]
            new_version = max(made) if made else None
        for version, state in before.items():
            self.provider.set_state(version, state)
        if previous is not None:
            if before.get(previous) is not KeyState.ACTIVE:
                self.provider.set_state(previous, KeyState.ACTIVE)
            self.provider.set_current(previous)
            for version, state in before.items():
                self.provider.set_state(version, state)
        if new_version is not None and new_version not in before:
            # Not deleted: another process may already have written data under it.
            self.provider.set_state(new_version, KeyState.DEPRECATED)
        return new_version

    def purge(self, version: int, *, inventory: Any = None, force: bool = False) -> None:
        """Deletes a deprecated version for good (data still sealed under it becomes unreadable),
        and records it in the audit trail (``KEY_PURGED``: the version, the stores the
        inventories covered, whether it was forced and what they still found).

        Args:
            inventory: an :class:`engine.reencrypt.Inventory` (or a list of them) taken after
                re-encryption: the purge is refused while any of them finds a value whose
                header names ``version``, readable or not (a value that fails authentication
                there, with another AAD rule say, may still open with the right one, but never
                once the version is gone).
            force: purge although the inventories still find values under the version (they
                become unreadable); recorded as ``forced`` with what was still found.

        Raises:
            InvalidArgument: the version is not deprecated, or the provider cannot delete.
            VersionStillInUse: an inventory still finds values under the version; its
                ``still_named`` maps (store, column) to the counts, and its message says how
                many and why, per store and column.
        """
        inventories = inventory if isinstance(inventory, (list, tuple)) else \
            [] if inventory is None else [inventory]
        left = _still_named(inventories, version)
        if left and not force:
            raise VersionStillInUse(version, left)
        states = {i.version: i.state for i in self.provider.list_versions()}
        if states.get(version) is not KeyState.DEPRECATED:
            raise InvalidArgument(f"only deprecated versions can be purged; v{version} is not")
        self.provider.purge(version)
        self._record(audit_events.KEY_PURGED, version=version, forced=bool(force),
                     checked=sorted({inv.store for inv in inventories}),
                     still_named={f"{s} {c}": n for (s, c), n in sorted(left.items())})

    def _notify(self, payload: dict[str, Any]) -> None:
        if self._webhook is not None:
            self._webhook.send(payload)

    def wait_for_webhooks(self, timeout: float | None = None) -> None:
        """Waits for pending webhook deliveries (tests, and clean shutdown)."""
        if self._webhook is not None:
            self._webhook.wait(timeout)

    # ---- the scheduler ----

    def run_forever(self, check_every: float = 3600.0, stop: threading.Event | None = None,
                    max_checks: int | None = None) -> int:
        """Checks every ``check_every`` seconds and rotates when needed; returns the number of
        rotations done when ``stop`` is set or after ``max_checks`` checks. A failed rotation is
        recorded (audit, metrics, webhook) and retried at the next check.

        Raises:
            InvalidArgument: ``check_every`` is not a positive number of seconds (0 would spin).
        """
        if (isinstance(check_every, bool) or not isinstance(check_every, (int, float))
                or not 0 < check_every < float("inf")):
            raise InvalidArgument("check_every must be a positive, finite number of seconds")
        stop = stop if stop is not None else threading.Event()
        rotations = checks = 0
        while not stop.is_set() and (max_checks is None or checks < max_checks):
            checks += 1
            reason = self.rotation_reason()
            if reason is not None:
                try:
                    self.rotate_keys(reason=reason)
                    rotations += 1
                except RotationFailed:
                    pass
            if max_checks is None or checks < max_checks:
                stop.wait(check_every)
        return rotations


@dataclass
class _Run:
    """What one rotation has done so far (for the next step, and for rolling back)."""

    before: dict[int, KeyState]
    previous: int | None
    new_version: int | None = None
    canaries: dict[int, dict[str, str]] = field(default_factory=dict)
    deprecated: tuple[int, ...] = ()

    @property
    def created(self) -> int:
        """The version the generate step made (the steps after it run only once it has)."""
        if self.new_version is None:
            raise RuntimeError("no version was generated")
        return self.new_version

    def detail(self, step: str) -> dict[str, Any]:
        """What the observer is told before ``step``."""
        if step == "pre_validation":
            return {"version": self.previous}
        if step in ("move_pointer", "post_verification", "handover"):
            return {"version": self.new_version}
        return {}


# The rotation flow: each step's name (as the observer, the audit trail and RotationFailed.step
# give it) and what it does.
_FLOW: tuple[tuple[str, Callable[[KeyRotationService, _Run], None]], ...] = (
    ("pre_validation", KeyRotationService._pre_validation),
    ("generate", KeyRotationService._generate),
    ("move_pointer", KeyRotationService._move_pointer),
    ("post_verification", KeyRotationService._post_verification),
    ("deprecate", KeyRotationService._deprecate),
    ("handover", KeyRotationService._handover),
)


def _current_info(provider: KeyProvider, versions: list[KeyVersionInfo]) -> KeyVersionInfo | None:
    if not versions:  # asking Vault for the current version would create one
        return None
    current = _current_version(provider)
    return next((i for i in versions if i.version == current), None)


def _current_version(provider: KeyProvider) -> int | None:
    return provider.current_version


def _default_state_dir(provider: KeyProvider) -> Path:
    if provider.local_state_dir is not None:
        return provider.local_state_dir
    base = os.environ.get("ENGINE_STATE_DIR")
    return Path(base) if base else Path.home() / ".local" / "state" / "engine"


_service_lock = fork_safe_lock()
_service: KeyRotationService | None = None


def get_key_rotation_service() -> KeyRotationService:
    """The process-wide rotation service, on the same provider as ``get_encryption_service()``."""
    global _service
    with _service_lock:
        if _service is None:
            from .service import get_encryption_service

            service = get_encryption_service()
            _service = KeyRotationService(service.provider, audit=service.audit,
                                          metrics=service.metrics)
        return _service


def reset_key_rotation_service() -> None:
    """Forgets the process-wide rotation service (tests)."""
    global _service
    with _service_lock:
        _service = None
