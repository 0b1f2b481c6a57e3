"""The PostgreSQL store: definitions mirror, instances, credentials vault, audit log.

The only package that runs SQL against the package's tables. Every function takes a
SQLAlchemy `Session`; the caller owns the transaction. Status writes go through
`store.status`, leases and batch claims through `store.leases`, audit rows through
`store.audit`.
"""

from __future__ import annotations
