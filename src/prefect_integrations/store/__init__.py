"""The PostgreSQL store: definitions mirror, instances, credentials vault, audit log.

The only package that runs SQL against the package's tables. Every function takes a
SQLAlchemy `Session`; the caller owns the transaction. Status writes go through
`store.status`, leases and batch claims through `store.leases`, audit rows through
`store.audit`. The exceptions to the session rule: the key re-encryption and checks
(`rekey`, `key_checks`) take the `~prefect_integrations.db.Database` and commit batch by
batch, `notify` works on a listener's connection, and `bootstrap` on a connection string
of the cluster.
"""

from __future__ import annotations
