"""Storage of configuration entities (SQLite or PostgreSQL), the change log with global
config versions, change notifications, and the data plane status table.

See docs/reference/storage.md.
"""

from gateway.store._api import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Change,
    Op,
    Row,
    Store,
    StoreSettings,
    StoreSnapshot,
    TagsMode,
)
from gateway.store._errors import DatabaseNotReady, StoreError
from gateway.store._migrations import MIGRATIONS, Migration, MigrationState
from gateway.store._open import (
    bootstrap,
    migrate_up,
    migration_state,
    open_store,
    reset,
    sqlite_path,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "MIGRATIONS",
    "Change",
    "DatabaseNotReady",
    "Migration",
    "MigrationState",
    "Op",
    "Row",
    "Store",
    "StoreError",
    "StoreSettings",
    "StoreSnapshot",
    "TagsMode",
    "bootstrap",
    "migrate_up",
    "migration_state",
    "open_store",
    "reset",
    "sqlite_path",
]
