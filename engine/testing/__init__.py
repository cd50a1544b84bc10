"""Real services for tests and benchmarks, started and stopped by the caller (no mocks).

:mod:`engine.testing.postgres` runs a throwaway PostgreSQL server (Debian's ``postgresql``
package) in a temporary data directory on a free loopback port::

    from engine.testing.postgres import PostgresServer

    with PostgresServer() as pg:
        url = pg.url            # postgresql://engine:<password>@127.0.0.1:<port>/postgres

The modules here use only the standard library.
"""
