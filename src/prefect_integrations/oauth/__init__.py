"""OAuth2: the connect service, token endpoint access and the token lifecycle."""

from __future__ import annotations
