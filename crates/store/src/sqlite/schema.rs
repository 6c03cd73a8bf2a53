//! The on-disk layout: one log table in kine's style (a row per write, the row id is the
//! revision) and a small meta table.

use rusqlite::Connection;

/// Bumped when the layout changes; a newer file is refused rather than misread.
pub const SCHEMA_VERSION: i64 = 1;

pub const META_REVISION: &str = "revision";
pub const META_COMPACT: &str = "compact_revision";
pub const META_COMPACT_PHYSICAL: &str = "compact_physical";
pub const META_SCHEMA: &str = "schema_version";

/// Pragmas for every connection.
pub fn configure(conn: &Connection, synchronous: &str) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    stable_plans(conn)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {synchronous};
         PRAGMA journal_size_limit = 16777216;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -16384;"
    ))
}

/// Keeps each cached statement's query plan. The bundled SQLite is built with STAT4, which
/// otherwise re-prepares a statement whenever a newly bound value might change its plan:
/// on every write, as every write binds a new key (measured: most of the writer's time in
/// looking a key up went to parsing and planning it again). Every statement here has one
/// right plan, by the `(name, id)` index or the primary key.
pub fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map(|_| ())
}

/// Creates the tables on first use. `auto_vacuum` must be chosen before the first table
/// exists: INCREMENTAL lets compaction hand freed pages back to the file system.
pub fn create(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "PRAGMA page_size = 8192;
         PRAGMA auto_vacuum = INCREMENTAL;
         CREATE TABLE IF NOT EXISTS kv (
             id              INTEGER PRIMARY KEY,   -- the revision of this write
             name            TEXT    NOT NULL,      -- the key
             created         INTEGER NOT NULL,      -- 1: this write created the key
             deleted         INTEGER NOT NULL,      -- 1: this write deleted the key (tombstone)
             create_revision INTEGER NOT NULL,
             prev_revision   INTEGER NOT NULL,      -- the row this one supersedes, 0 if none
             value           BLOB    NOT NULL
         );
         CREATE INDEX IF NOT EXISTS kv_name_id ON kv (name, id);
         CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
         INSERT OR IGNORE INTO meta (name, value) VALUES
             ('revision', 1), ('compact_revision', 0), ('compact_physical', 0), ('schema_version', 1);",
    )
}

pub fn read_meta(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |row| row.get(0))
}

pub fn write_meta(conn: &Connection, name: &str, value: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE meta SET value = ?2 WHERE name = ?1")?
        .execute(rusqlite::params![name, value])?;
    Ok(())
}

/// The newest row of a key, deleted or not.
pub const SELECT_LATEST: &str =
    "SELECT id, create_revision, deleted, value FROM kv WHERE name = ?1 ORDER BY id DESC LIMIT 1";

/// The live keys of a range at a revision, in key order, starting at (`>=`) a key.
pub const SELECT_RANGE_FROM: &str = "SELECT k.name, k.value, k.create_revision, k.id FROM kv AS k
     WHERE k.name >= ?1 AND k.name < ?2 AND k.deleted = 0
       AND k.id = (SELECT MAX(i.id) FROM kv AS i WHERE i.name = k.name AND i.id <= ?3)
     ORDER BY k.name LIMIT ?4";

/// The same, starting after (`>`) a key: the next page of a range.
pub const SELECT_RANGE_AFTER: &str = "SELECT k.name, k.value, k.create_revision, k.id FROM kv AS k
     WHERE k.name > ?1 AND k.name < ?2 AND k.deleted = 0
       AND k.id = (SELECT MAX(i.id) FROM kv AS i WHERE i.name = k.name AND i.id <= ?3)
     ORDER BY k.name LIMIT ?4";

pub const COUNT_RANGE: &str = "SELECT COUNT(*) FROM kv AS k
     WHERE k.name >= ?1 AND k.name < ?2 AND k.deleted = 0
       AND k.id = (SELECT MAX(i.id) FROM kv AS i WHERE i.name = k.name)";

/// Writes in a revision window under a prefix, with the value each one replaced.
pub const SELECT_EVENTS: &str = "SELECT k.id, k.name, k.created, k.deleted, k.create_revision, k.value,
            p.id, p.create_revision, p.value
     FROM kv AS k LEFT JOIN kv AS p ON p.id = k.prev_revision AND k.created = 0
     WHERE k.id > ?1 AND k.id <= ?2 AND k.name >= ?3 AND k.name < ?4
     ORDER BY k.id LIMIT ?5";

pub const INSERT: &str = "INSERT INTO kv (id, name, created, deleted, create_revision, prev_revision, value)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// Rows superseded by a write in (?1, ?2]: no reader at or after ?2 can see them.
pub const DELETE_SUPERSEDED: &str =
    "DELETE FROM kv WHERE id IN (SELECT prev_revision FROM kv WHERE id > ?1 AND id <= ?2 AND prev_revision > 0)";

/// Tombstones in (?1, ?2]: once compacted, a deleted key is simply absent.
pub const DELETE_TOMBSTONES: &str = "DELETE FROM kv WHERE deleted = 1 AND id > ?1 AND id <= ?2";
