"""Which org a message may speak for (issue 15).

An agent names its own ``org_id``; on a shared broker anyone who can produce to the raw
or feedback topic could otherwise write into, or teach, any org's shards. With
``tenancy.signed`` the worker accepts a raw event only with an HMAC-SHA256 of its exact
bytes, in the ``ruleless-sig`` Kafka header, under the key of the org it names
(``tenancy.agent_keys``), and a verdict only under a key of the analysts of the shard's
org (``tenancy.analyst_keys``). An agent holds its own org's agent key only
(``agent.signing_key``): a compromised host can lie about its own org, never about
another, and cannot teach shards at all. Everything else is dead-lettered as
:class:`Unauthenticated`.

On a real Kafka, bind principals to orgs with ACLs as well (README, Tenancy): the
signature is what the embedded broker, which has no ACLs, relies on alone.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import SecretStr

from schemas.errors import Unauthenticated

HEADER = "ruleless-sig"


def signature(key: SecretStr, value: bytes) -> bytes:
    return hmac.new(key.get_secret_value().encode(), value, hashlib.sha256).hexdigest().encode()


def sign_headers(key: SecretStr | None, value: bytes) -> list[tuple[str, bytes]] | None:
    """The Kafka headers that prove ``value`` was produced by a holder of ``key``."""
    return [(HEADER, signature(key, value))] if key is not None else None


def verify(keys: Mapping[str, SecretStr], org_id: str, value: bytes, headers: Any, what: str) -> None:
    """Raise :class:`Unauthenticated` unless ``headers`` hold a signature of ``value``
    under ``org_id``'s key."""
    key = keys.get(org_id)
    if key is None:
        raise Unauthenticated(f"{what} for org {org_id!r}: no key is configured for that org")
    given = _header(headers)
    if given is None:
        raise Unauthenticated(f"{what} for org {org_id!r} carries no {HEADER} header")
    if not hmac.compare_digest(given, signature(key, value)):
        raise Unauthenticated(f"{what} for org {org_id!r}: the signature is not that org's")


def _header(headers: Any) -> bytes | None:
    """The signature among Kafka headers, as librdkafka (list of pairs) or Faust
    (a mapping or a list) give them."""
    pairs: Iterable[tuple[Any, Any]] = headers.items() if isinstance(headers, Mapping) else (headers or [])
    for name, value in pairs:
        if (name.decode() if isinstance(name, bytes) else name) == HEADER:
            return bytes(value) if value is not None else None
    return None
