"""The storage interface shared by the SQLite and PostgreSQL backends.

Rows are the JSON-able dicts the schemas produce (already validated by the caller, foreign
keys written ``{"id": ...}``). Every write is one transaction; a write that changes anything
allocates the next global config version and appends its changes to the change log in that
same transaction. See docs/reference/storage.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from os import PathLike
from typing import Any, Literal, Protocol

import attrs

Row = dict[str, Any]
Op = Literal["insert", "update", "delete"]
TagsMode = Literal["and", "or"]

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


@attrs.frozen(kw_only=True)
class Change:
    """One entry of the change log: entity ``id`` of type ``entity`` was ``op``-ed at
    ``version``. A write that touches several entities (a cascading delete, an import)
    logs several changes with the same version."""

    version: int
    entity: str
    id: str
    op: Op


@attrs.frozen(kw_only=True)
class StoreSnapshot:
    """Every entity (lists ordered by id) as of ``version``."""

    version: int
    entities: Mapping[str, list[Row]]


class StoreSettings(Protocol):
    """The settings the store reads (``gateway.settings.Settings`` has them all)."""

    @property
    def database(self) -> str: ...
    @property
    def prefix(self) -> str | PathLike[str]: ...
    @property
    def sqlite_path(self) -> str | PathLike[str] | None: ...
    @property
    def pg_host(self) -> str: ...
    @property
    def pg_port(self) -> int: ...
    @property
    def pg_user(self) -> str: ...
    @property
    def pg_password(self) -> str | None: ...
    @property
    def pg_database(self) -> str: ...
    @property
    def pg_schema(self) -> str | None: ...
    @property
    def pg_ssl(self) -> bool: ...
    @property
    def pg_timeout(self) -> int: ...  # milliseconds, as kong.conf


class Store(Protocol):
    """Configuration entities, the change log, and the data plane status table."""

    # -- entities -------------------------------------------------------------------------
    async def get(self, entity: str, id: str) -> Row | None:
        """The entity with this id, or None."""

    async def get_by(self, entity: str, field: str, value: Any) -> Row | None:
        """The entity whose unique ``field`` (or endpoint key) equals ``value``."""

    async def page(
        self,
        entity: str,
        *,
        size: int = DEFAULT_PAGE_SIZE,
        offset: str | None = None,
        tags: Sequence[str] | None = None,
        tags_mode: TagsMode = "and",
        filters: Mapping[str, str] | None = None,
    ) -> tuple[list[Row], str | None]:
        """One page ordered by id and the opaque offset of the next page (None: last page).

        ``filters`` maps foreign fields to ids (``{"service": id}``). Errors: INVALID_SIZE,
        INVALID_OFFSET.
        """

    async def count(self, entity: str) -> int:
        """How many entities of this type exist."""

    async def insert(self, entity: str, row: Row) -> Row:
        """Create; PRIMARY_KEY_VIOLATION, FOREIGN_KEY_VIOLATION, UNIQUE_VIOLATION."""

    async def update(self, entity: str, row: Row) -> Row:
        """Replace the entity with ``row["id"]`` entirely; NOT_FOUND when absent."""

    async def upsert(self, entity: str, row: Row) -> Row:
        """Insert, or replace the entity with the same id."""

    async def delete(self, entity: str, id: str) -> bool:
        """Delete with the schemas' on_delete rules; False when it did not exist."""

    async def replace_all(self, config: Mapping[str, Sequence[Row]]) -> int:
        """Make ``config`` the whole content (db_import); returns the current version."""

    async def export(self) -> tuple[int, dict[str, list[Row]]]:
        """A consistent copy of every entity and the version it corresponds to."""

    async def snapshot(self) -> StoreSnapshot:
        """``export()`` as a ``StoreSnapshot``."""

    # -- versions and changes -------------------------------------------------------------
    async def current_version(self) -> int:
        """The config version of the last committed write (0: never written)."""

    async def changes_since(self, version: int) -> list[Change]:
        """Every change after ``version``, in order."""

    def watch(self, after_version: int) -> AsyncIterator[int]:
        """Yield the current version each time it grows past the last one yielded."""

    async def wait_for_version(self, after: int, timeout: float) -> int:
        """The current version once it is above ``after``, or when ``timeout`` expires."""

    # -- data planes (not config: no version bump) ----------------------------------------
    async def upsert_data_plane(self, row: Row) -> None:
        """Insert or replace the status row of a data plane (needs ``id``, ``last_seen``)."""

    async def get_data_plane(self, id: str) -> Row | None:
        """The status row of one data plane."""

    async def page_data_planes(
        self, *, size: int = DEFAULT_PAGE_SIZE, offset: str | None = None
    ) -> tuple[list[Row], str | None]:
        """Data plane rows ordered by id, paginated as ``page``."""

    async def purge_data_planes(self, older_than: float) -> int:
        """Delete data planes last seen before ``older_than`` (epoch s); how many went."""
