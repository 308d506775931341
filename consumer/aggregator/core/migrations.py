"""The numbered schema migrations in infra/migrations/: pure, no database.

`NNN_name.sql`, applied in version order, each once, recorded in `schema_migrations` (by
Store.migrate at every start, and by infra/00-migrate.sh on a new docker volume). Every file is
idempotent, so a database the first release created (which has no record yet) takes them all.
To change the schema, add the next number; never edit a file that was released.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FILE_PATTERN = re.compile(r"(?P<version>[0-9]{3})_(?P<label>[a-z0-9_]+)\.sql")


class MigrationError(ValueError):
    """The migrations folder or the database's record of it is not usable; one sentence."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # the file name without .sql, as recorded
    path: Path


def migrations_in(folder: Path) -> list[Migration]:
    """The folder's migrations in version order; refuses an empty folder, gaps and duplicate
    numbers."""
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = FILE_PATTERN.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"{path} is not named like 003_add_column.sql.")
        found.append(Migration(int(match["version"]), path.stem, path))
    if not found:
        what = "is not a folder" if not folder.is_dir() else "holds no migrations (NNN_name.sql)"
        raise MigrationError(
            f"{folder} {what}: MIGRATIONS_DIR (--migrations-dir) must name the project's "
            "infra/migrations folder."
        )
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"the migrations in {folder} are not numbered 1, 2, 3...: {versions}.")
    return found


def missing(migrations: list[Migration], applied: set[int]) -> list[Migration]:
    """What a database with these versions recorded still needs; refuses a database that is
    newer than this code (it would write into a schema it does not know)."""
    newest = max(applied, default=0)
    if newest > len(migrations):
        raise MigrationError(
            f"the database is at schema version {newest}, newer than this consumer's "
            f"{len(migrations)}: run the newer consumer."
        )
    return [m for m in migrations if m.version not in applied]
