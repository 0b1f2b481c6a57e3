"""The PostgreSQL store: definitions mirror, instances, credentials vault, audit log.

Every function takes a SQLAlchemy `Session`; the caller owns the transaction. The
exceptions say so: the key re-encryption and checks (`rekey`, `key_checks`) take the
`~prefect_integrations.db.Database` and commit batch by batch, `notify` works on a
listener's connection, and `bootstrap` on a connection string of the cluster.
"""

from __future__ import annotations
