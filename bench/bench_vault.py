"""Vault envelope encryption vs a local key vs Vault Transit, side by side in one run.

Starts its own OpenBao dev server (:mod:`engine.testing.openbao`, as the tests do) and times:

* **vault cold**: a new :class:`~engine.vault.VaultKeyProvider` (token check, Transit key
  check), ``get_current_key()`` (KV read + Transit unwrap), then ``AesGcm.seal_batch`` over N
  64-byte values;
* **local cold**: the same with an ``EnvironmentKeyProvider`` (PBKDF2 derivation of the key from
  the master key and its state file; a ``StaticKeyProvider`` if that is not available);
* **warm** variants of both (the key already cached: the native engine only);
* **Transit**: Vault's own ``encrypt`` with ``batch_input`` (200 values per request) on a sample,
  extrapolated to a rate.

Contenders run in interleaved rounds and each figure is a median; nothing is asserted.

    python -m bench.bench_vault             # 1,000,000 values
    python -m bench.bench_vault --quick     # 100,000 values (CI smoke)
    python -m bench.bench_vault --json out.json   ('-' for stdout)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import engine

VALUE_BYTES = 64
TRANSIT_BATCH = 200  # OpenBao refuses 500 (too many JSON strings per request)


def _median_time(fn: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _interleaved(contenders: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds per contender, rounds interleaved so that noise hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for fn in contenders.values():
        fn()  # warm up
    for _ in range(rounds):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _local_provider(workdir: str) -> tuple[Callable[[], Any], Callable[[], None], str]:
    """(make provider, forget cached keys, description) for the local baseline."""
    try:
        from engine.keys import _state
        from engine.keys.environment import EnvironmentKeyProvider

        master = base64.b64encode(os.urandom(48)).decode()
        path = os.path.join(workdir, "keys.json")
        EnvironmentKeyProvider(master_key=master, state_path=path).get_current_key()
        return (lambda: EnvironmentKeyProvider(master_key=master, state_path=path),
                _state.clear_cache, "EnvironmentKeyProvider (PBKDF2-SHA512, 100k iterations)")
    except ImportError:
        from engine.keys.static import StaticKeyProvider

        key = os.urandom(32)
        return (lambda: StaticKeyProvider({1: key}), lambda: None,
                "StaticKeyProvider (environment provider not available)")


def measure(quick: bool) -> dict[str, Any]:
    # imported here: the Vault provider needs hvac, which asv's environment (it imports every
    # module under bench/ to find benchmarks) does not install
    from engine.testing.openbao import BaoServer
    from engine.vault import VaultKeyProvider

    n = 100_000 if quick else 1_000_000
    transit_n = 5_000 if quick else 20_000
    rounds = 3 if quick else 5
    data = np.frombuffer(os.urandom(n * VALUE_BYTES), dtype=np.uint8)
    offsets = np.arange(0, (n + 1) * VALUE_BYTES, VALUE_BYTES, dtype=np.int64)
    batch = engine.Batch(data, offsets)

    with BaoServer() as server, tempfile.TemporaryDirectory() as workdir:
        conf = {"token": server.root_token, "timeout": 5.0, "retries": 1}
        setup = VaultKeyProvider(server.address, **conf)
        setup.get_current_key()  # version 1 exists before timing
        warm_vault = VaultKeyProvider(server.address, **conf)
        make_local, forget_local, local_desc = _local_provider(workdir)
        warm_local = make_local()

        def vault_cold() -> None:
            with VaultKeyProvider(server.address, **conf) as p:
                p.get_current_key().cipher.seal_batch(batch)

        def local_cold() -> None:
            forget_local()
            make_local().get_current_key().cipher.seal_batch(batch)

        def vault_warm() -> None:
            warm_vault.get_current_key().cipher.seal_batch(batch)

        def local_warm() -> None:
            warm_local.get_current_key().cipher.seal_batch(batch)

        secs = _interleaved({"vault cold": vault_cold, "local cold": local_cold,
                             "vault warm": vault_warm, "local warm": local_warm}, rounds)

        def vault_fetch() -> None:
            with VaultKeyProvider(server.address, **conf) as p:
                p.get_current_key()

        def local_fetch() -> None:
            forget_local()
            make_local().get_current_key()

        fetch = {"vault": _median_time(vault_fetch, rounds), "local": _median_time(local_fetch,
                                                                                   rounds)}

        transit = setup.connection.client.secrets.transit
        sample = [{"plaintext": base64.b64encode(batch[i]).decode()} for i in range(transit_n)]

        def transit_run() -> None:
            for i in range(0, transit_n, TRANSIT_BATCH):
                transit.encrypt_data(setup.key_name, "", batch_input=sample[i:i + TRANSIT_BATCH])

        transit_s = _median_time(transit_run, max(1, rounds - 2))
        for p in (setup, warm_vault):
            p.close()

    rates = {k: n / v for k, v in secs.items()}
    rates["transit batch"] = transit_n / transit_s
    return {
        "values": n, "value_bytes": VALUE_BYTES, "rounds": rounds,
        "transit_sample": transit_n, "transit_batch": TRANSIT_BATCH,
        "local_provider": local_desc, "backend": engine.backend_info()["backend"],
        "seconds": secs, "key_fetch_ms": {k: v * 1e3 for k, v in fetch.items()},
        "transit_seconds_for_sample": transit_s,
        "transit_extrapolated_seconds": n / rates["transit batch"],
        "rates_per_s": rates,
        "ratios": {
            "vault cold / local cold (goal >= 0.9)": rates["vault cold"] / rates["local cold"],
            "vault warm / local warm (goal >= 0.9)": rates["vault warm"] / rates["local warm"],
            "vault cold / transit batch (goal >= 100)": rates["vault cold"] / rates["transit batch"],
            "vault warm / transit batch": rates["vault warm"] / rates["transit batch"],
        },
    }


def render(r: dict[str, Any]) -> str:
    lines = [
        f"{r['values']:,} values of {r['value_bytes']} B, AesGcm.seal_batch, backend "
        f"{r['backend']}, median of {r['rounds']} interleaved rounds",
        f"local baseline: {r['local_provider']}",
        "",
        f"{'contender':<34}{'seconds':>10}{'values/s':>16}",
    ]
    for name, s in r["seconds"].items():
        lines.append(f"{name + ' (incl. key fetch)' if 'cold' in name else name:<34}"
                     f"{s:>10.3f}{r['rates_per_s'][name]:>16,.0f}")
    lines.append(f"{'transit batch (extrapolated)':<34}{r['transit_extrapolated_seconds']:>10.1f}"
                 f"{r['rates_per_s']['transit batch']:>16,.0f}")
    lines += ["", f"key fetch, cold: vault {r['key_fetch_ms']['vault']:.1f} ms "
                  f"(connect + KV + Transit unwrap), local {r['key_fetch_ms']['local']:.1f} ms",
              f"transit: {r['transit_sample']:,} values in batches of {r['transit_batch']} took "
              f"{r['transit_seconds_for_sample']:.2f} s", "", "ratios:"]
    for name, v in r["ratios"].items():
        lines.append(f"  {name:<44}{v:>10.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="100,000 values (a CI smoke test)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON ('-': stdout)")
    args = p.parse_args(argv)
    result = measure(args.quick)
    print(render(result))
    if args.json:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
