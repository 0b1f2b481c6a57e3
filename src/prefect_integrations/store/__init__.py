"""The PostgreSQL store: definitions mirror, instances, credentials vault, audit log.

Every function takes a SQLAlchemy `Session`; the caller owns the transaction.
"""

from __future__ import annotations
