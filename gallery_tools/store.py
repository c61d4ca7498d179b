"""SQLite metadata of a gallery: faces, identities, settings and a key-value ``meta`` table.

One database file (``gallery.sqlite``) in WAL mode:

* a **writer** keeps one write transaction open from its first change until ``commit()``; nothing
  it does is visible to other processes before that (pages it spills go to the WAL as
  uncommitted frames, which readers and crash recovery ignore), and a crash rolls it back. The gallery's
  ``save()`` commits it together with the new generation number and file records, which makes the
  SQLite commit the single commit point of a generation.
* a **reader** pins a read snapshot for its whole life, so it keeps seeing the generation it
  loaded while writers commit new ones (WAL readers neither block writers nor are blocked).

``secure_delete`` is on, so deleted rows are overwritten with zeros; ``vacuum()`` then compacts.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from gallery_tools.errors import GalleryError

APPLICATION_ID = 0x464B4731  # "FKG1": marks a facekd gallery database
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE gallery (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE identities (identity INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE faces (
    face_id INTEGER PRIMARY KEY,
    identity INTEGER NOT NULL REFERENCES identities(identity),
    source_path TEXT,
    source_sha256 TEXT,
    enrolled_at TEXT NOT NULL
);
CREATE INDEX faces_identity ON faces(identity);
CREATE INDEX faces_source_sha256 ON faces(source_sha256) WHERE source_sha256 IS NOT NULL;
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
_TABLES = {"gallery", "identities", "faces", "meta"}


@dataclass(frozen=True)
class IdentityInfo:
    """One enrolled identity: integer id, optional display name, number of stored faces."""

    identity: int
    name: str | None
    n_faces: int


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Store:
    """The gallery's SQLite database. Use :meth:`create` or :meth:`open`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, writable: bool):
        self._conn = conn
        self.path = path
        self.writable = writable

    # ------------------------------------------------------------------ opening
    @staticmethod
    def _connect(path: Path, mode: str) -> sqlite3.Connection:
        try:
            # as_uri() percent-quotes '#', '?' and '%', which a bare "file:{path}" would misread
            conn = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode={mode}", uri=True,
                                   isolation_level=None,
                                   timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        except sqlite3.Error as exc:
            raise GalleryError(f"{path}: cannot open the gallery database ({exc})") from None
        return conn

    @staticmethod
    def _configure(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")     # a committed generation survives power loss
        conn.execute("PRAGMA secure_delete=ON")     # removed faces are zeroed, not just unlinked
        conn.execute("PRAGMA temp_store=MEMORY")    # VACUUM's copy never lands in /tmp

    @classmethod
    def create(cls, path: Path, settings: dict[str, str]) -> "Store":
        """Create the database with its schema and ``settings``, committed in one transaction."""
        conn = cls._connect(path, "rwc")
        try:
            cls._configure(conn)
            conn.execute("BEGIN IMMEDIATE")
            # one statement at a time: executescript() would COMMIT mid-transaction
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(stmt)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.executemany("INSERT INTO gallery(key, value) VALUES (?, ?)", settings.items())
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, writable=True)

    @classmethod
    def open(cls, path: Path, *, writable: bool) -> "Store":
        """Open and verify an existing gallery database (a foreign file raises GalleryError)."""
        if not path.is_file():
            raise GalleryError(f"{path.parent}: not a gallery (no {path.name})")
        # A reader on a read-only directory (mount, permissions) cannot create WAL's -shm file;
        # immutable=1 reads the file as it is, which is right when no writer can exist there.
        frozen = not writable and not os.access(path.parent, os.W_OK)
        conn = cls._connect(path, "ro&immutable=1" if frozen else "rw")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise GalleryError(f"{path}: not a gallery database ({exc})") from None
        if app_id != APPLICATION_ID or not _TABLES <= tables:
            conn.close()
            raise GalleryError(f"{path}: a foreign SQLite database, not a facekd gallery "
                               f"(application_id={app_id:#x}, tables={sorted(tables)})")
        if version != SCHEMA_VERSION:
            conn.close()
            raise GalleryError(f"{path}: gallery schema version {version}, this code reads "
                               f"{SCHEMA_VERSION}")
        if not frozen:
            try:
                cls._configure(conn)
            except sqlite3.OperationalError as exc:  # e.g. a read-only file in a writable folder
                conn.close()
                raise GalleryError(f"{path}: cannot use the gallery database ({exc})") from None
        store = cls(conn, path, writable)
        if not writable:
            store.pin_snapshot()
        else:
            # A writer builds the next generation on these pages: refuse a damaged file before
            # changing anything (0.1 s at a million faces). Readers rely on SQLite's own checks
            # of the pages they read; ``check`` runs the same scan.
            try:
                integrity = store.integrity()
            except sqlite3.DatabaseError as exc:
                integrity = str(exc)
            if integrity != "ok":
                conn.close()
                raise GalleryError(f"{path}: the gallery database is damaged (quick_check: "
                                   f"{integrity.splitlines()[0][:200]}); restore it from a backup")
        return store

    def pin_snapshot(self) -> None:
        """(Re)start the reader's read transaction: later queries see one committed generation."""
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")
        self._conn.execute("BEGIN")
        self._conn.execute("SELECT value FROM gallery WHERE key='generation'").fetchone()

    def close(self) -> None:
        """Roll back anything uncommitted and close; a writer also checkpoints the WAL."""
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            if self.writable:
                self.checkpoint()
        finally:
            self._conn.close()

    # ------------------------------------------------------------------ transactions
    def _write(self) -> sqlite3.Connection:
        if not self.writable:
            raise GalleryError("the gallery was opened read-only (open it with writable=True)")
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def commit(self) -> None:
        """Commit the open write transaction: the commit point of a gallery generation."""
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def vacuum(self) -> None:
        """Rebuild the file without free pages (after removals). Outside any transaction."""
        self.commit()
        self._conn.execute("VACUUM")

    def checkpoint(self) -> bool:
        """Fold the WAL into the database and truncate it; False if a reader's snapshot prevents it."""
        if self._conn.in_transaction:
            return False
        # No waiting: a reader pinned on an older generation must not stall the writer's save.
        self._conn.execute("PRAGMA busy_timeout=0")
        try:
            busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError:
            busy = 1
        finally:
            self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return busy == 0

    # ------------------------------------------------------------------ settings
    def settings(self) -> dict[str, str]:
        return dict(self._conn.execute("SELECT key, value FROM gallery"))

    def set_settings(self, values: dict[str, str]) -> None:
        self._write().executemany(
            "INSERT INTO gallery(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value", values.items())

    # ------------------------------------------------------------------ faces
    def face_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """``(face_ids, identities)``, both ``(N,)`` int64, in face-id order.

        SQLite joins the numbers into one text that numpy parses: a million rows as Python tuples
        cost 0.5-0.8 s, this 0.3 s. The parsed count is checked against ``count(*)``, with the
        row-by-row read as the fallback (e.g. a non-integer value in a damaged database).
        """
        n, text = self._conn.execute(
            "SELECT count(*), group_concat(face_id || ',' || identity) FROM "
            "(SELECT face_id, identity FROM faces ORDER BY face_id)").fetchone()
        flat = np.zeros(0, np.int64)
        if text:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # a short read is checked below
                flat = np.fromstring(text, dtype=np.int64, sep=",")
        if flat.size != 2 * n:
            cur = self._conn.execute("SELECT face_id, identity FROM faces ORDER BY face_id")
            flat = np.fromiter((v for row in cur for v in row), dtype=np.int64)
        rows = flat.reshape(-1, 2)
        return rows[:, 0].copy(), rows[:, 1].copy()

    def identity_names(self) -> tuple[np.ndarray, list[str | None]]:
        """Every identity ``(m,)`` int64, ascending, and its name (None where unnamed)."""
        rows = self._conn.execute("SELECT identity, name FROM identities ORDER BY identity").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows]

    def add_faces(self, face_ids: np.ndarray, identities: np.ndarray,
                  names: Sequence[str | None] | None, sources: Sequence[str | None] | None,
                  shas: Sequence[str | None] | None) -> None:
        conn = self._write()
        n = len(face_ids)
        when = _now()
        text = lambda seq: [None if v is None else str(v) for v in seq] if seq is not None else [None] * n  # noqa: E731
        # A savepoint: a failing statement must not leave half a batch in the open transaction,
        # which the next save() would commit against the in-memory state.
        conn.execute("SAVEPOINT add_faces")
        try:
            conn.executemany("INSERT OR IGNORE INTO identities(identity) VALUES (?)",
                             ((int(i),) for i in np.unique(identities)))
            if names is not None:
                named = {int(i): nm for i, nm in zip(identities, text(names)) if nm is not None}
                conn.executemany("UPDATE identities SET name=? WHERE identity=?",
                                 ((nm, i) for i, nm in named.items()))
            conn.executemany(
                "INSERT INTO faces(face_id, identity, source_path, source_sha256, enrolled_at) "
                "VALUES (?, ?, ?, ?, ?)",
                zip(face_ids.tolist(), identities.tolist(), text(sources), text(shas),
                    (when for _ in range(n))))
        except (sqlite3.Error, UnicodeEncodeError) as exc:  # e.g. a lone surrogate in a name
            conn.execute("ROLLBACK TO add_faces")
            conn.execute("RELEASE add_faces")
            raise GalleryError(f"cannot record faces in the gallery database ({exc})") from None
        conn.execute("RELEASE add_faces")

    def remove_identity(self, identity: int) -> int:
        conn = self._write()
        n = conn.execute("DELETE FROM faces WHERE identity=?", (int(identity),)).rowcount
        conn.execute("DELETE FROM identities WHERE identity=?", (int(identity),))
        return n

    def identities(self) -> list[IdentityInfo]:
        rows = self._conn.execute(
            "SELECT i.identity, i.name, COUNT(f.face_id) FROM identities i "
            "LEFT JOIN faces f ON f.identity = i.identity GROUP BY i.identity ORDER BY i.identity")
        return [IdentityInfo(int(i), name, int(n)) for i, name, n in rows]

    def has_identity(self, identity: int) -> bool:
        return self._conn.execute("SELECT 1 FROM identities WHERE identity=?",
                                  (int(identity),)).fetchone() is not None

    def sources(self, identity: int) -> list[str]:
        """Source paths recorded for ``identity``'s faces."""
        return [r[0] for r in self._conn.execute(
            "SELECT source_path FROM faces WHERE identity=? AND source_path IS NOT NULL",
            (int(identity),))]

    def has_source(self, sha256: str) -> bool:
        return self._conn.execute("SELECT 1 FROM faces WHERE source_sha256=? LIMIT 1",
                                  (str(sha256),)).fetchone() is not None

    def known_sources(self, shas: Iterable[str]) -> set[str]:
        """The subset of ``shas`` already stored (one query per 500, for resumable enrolment)."""
        shas = list(shas)
        found: set[str] = set()
        for start in range(0, len(shas), 500):
            chunk = shas[start:start + 500]
            q = ",".join("?" * len(chunk))
            found.update(r[0] for r in self._conn.execute(
                f"SELECT DISTINCT source_sha256 FROM faces WHERE source_sha256 IN ({q})", chunk))
        return found

    def orphan_identities(self) -> list[int]:
        """Identities with no face (an inconsistency ``check`` reports)."""
        return [int(r[0]) for r in self._conn.execute(
            "SELECT identity FROM identities WHERE identity NOT IN (SELECT identity FROM faces)")]

    def integrity(self) -> str:
        return str(self._conn.execute("PRAGMA quick_check").fetchone()[0])

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (str(key),)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, key: str, value: bytes) -> None:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise GalleryError(f"meta values are bytes, got {type(value).__name__}")
        self._write().execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(key), bytes(value)))

    def delete_meta(self, key: str) -> None:
        self._write().execute("DELETE FROM meta WHERE key=?", (str(key),))

    def meta_items(self) -> dict[str, bytes]:
        return {k: bytes(v) for k, v in self._conn.execute("SELECT key, value FROM meta")}


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True)
