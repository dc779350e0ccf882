//! The durable quota counts of the `local` backend: one SQLite database in WAL mode
//! under `server.data_dir`, which two processes (an old and a new one during an
//! upgrade) open together. Each process merges its deltas in one short write
//! transaction per `sync_interval` (`count = count + delta`, so concurrent writers add up
//! instead of overwriting), and reads a key's count the first time it sees the key.
//!
//! Two connections: the request path reads through one (WAL readers never wait for the
//! writer), the sync thread writes through the other. `PRAGMA data_version` on the writer
//! tells whether another process committed since the last sync, and only then are the
//! active keys read again.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

pub const FILE_NAME: &str = "gatehouse-limits.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS quota_counts (
    limit_id TEXT NOT NULL,
    key BLOB NOT NULL,
    window INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (limit_id, key, window)
) WITHOUT ROWID;
";

pub struct Sqlite {
    read: Mutex<Connection>,
    write: Mutex<Connection>,
    last_version: Mutex<Option<i64>>,
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    // Another process may hold the write lock for a moment (its own sync).
    c.busy_timeout(Duration::from_secs(2))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    // In WAL mode NORMAL loses no committed transaction on a process crash, only on
    // power loss; the counts are re-merged every sync_interval anyway.
    c.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(c)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Sqlite {
    /// Creates `data_dir` if needed and opens (or creates) the database.
    pub fn open(data_dir: &str) -> Result<Sqlite, String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("server.data_dir {data_dir:?}: cannot create it: {e}"))?;
        let path = Path::new(data_dir).join(FILE_NAME);
        let err = |e: rusqlite::Error| format!("cannot open {}: {e}", path.display());
        let write = open_conn(&path).map_err(err)?;
        write.execute_batch(SCHEMA).map_err(err)?;
        let read = open_conn(&path).map_err(err)?;
        Ok(Sqlite {
            read: Mutex::new(read),
            write: Mutex::new(write),
            last_version: Mutex::new(None),
        })
    }

    /// The count of one key's window (0 when absent).
    pub fn load(&self, limit_id: &str, key: &[u8], window: u64) -> rusqlite::Result<u64> {
        let c = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = c.prepare_cached(
            "SELECT count FROM quota_counts WHERE limit_id = ?1 AND key = ?2 AND window = ?3",
        )?;
        let n: Option<i64> = st
            .query_row(params![limit_id, key, to_i64(window)], |r| r.get(0))
            .optional()?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    /// Adds each delta to its row in one transaction; returns the new totals in order.
    pub fn add(&self, rows: &[(&str, &[u8], u64, i64)]) -> rusqlite::Result<Vec<u64>> {
        let mut c = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut totals = Vec::with_capacity(rows.len());
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO quota_counts (limit_id, key, window, count) VALUES (?1, ?2, ?3, max(?4, 0))
                 ON CONFLICT (limit_id, key, window) DO UPDATE SET count = max(count + ?4, 0)
                 RETURNING count",
            )?;
            for (id, key, window, delta) in rows {
                let n: i64 =
                    st.query_row(params![id, key, to_i64(*window), delta], |r| r.get(0))?;
                totals.push(n.max(0) as u64);
            }
        }
        tx.commit()?;
        Ok(totals)
    }

    /// Reads several counts (through the writer's connection, on the sync thread).
    pub fn read_many(&self, rows: &[(&str, &[u8], u64)]) -> rusqlite::Result<Vec<u64>> {
        let c = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = c.prepare_cached(
            "SELECT count FROM quota_counts WHERE limit_id = ?1 AND key = ?2 AND window = ?3",
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, key, window) in rows {
            let n: Option<i64> = st
                .query_row(params![id, key, to_i64(*window)], |r| r.get(0))
                .optional()?;
            out.push(n.unwrap_or(0).max(0) as u64);
        }
        Ok(out)
    }

    /// Whether another connection committed since the last call (the first call says yes).
    pub fn changed_elsewhere(&self) -> rusqlite::Result<bool> {
        let c = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let v: i64 = c.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let mut last = self.last_version.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *last != Some(v);
        *last = Some(v);
        Ok(changed)
    }

    /// Keeps a limit's rows under `cap`: deletes the rows of windows before `current`,
    /// then, when more than `cap` remain, the least counted down to `keep` (as a rate
    /// drops the buckets closest to full: a key whose row goes starts again from what
    /// this process holds in memory, or from zero, which can only admit it more).
    /// Returns the rows left.
    pub fn trim(
        &self,
        limit_id: &str,
        current: u64,
        cap: usize,
        keep: usize,
    ) -> rusqlite::Result<usize> {
        let c = self.write.lock().unwrap_or_else(|e| e.into_inner());
        c.execute(
            "DELETE FROM quota_counts WHERE limit_id = ?1 AND window < ?2",
            params![limit_id, to_i64(current)],
        )?;
        let n: i64 = c.query_row(
            "SELECT count(*) FROM quota_counts WHERE limit_id = ?1",
            params![limit_id],
            |r| r.get(0),
        )?;
        let n = n.max(0) as usize;
        if n <= cap {
            return Ok(n);
        }
        let excess = n - keep.min(cap);
        let deleted = c.execute(
            "DELETE FROM quota_counts WHERE limit_id = ?1 AND (key, window) IN (
                 SELECT key, window FROM quota_counts WHERE limit_id = ?1
                 ORDER BY count ASC LIMIT ?2)",
            params![limit_id, to_i64(excess as u64)],
        )?;
        Ok(n - deleted)
    }

    /// Deletes the rows of windows that ended (they can never matter again).
    pub fn purge(&self, limit_id: &str, current_window: u64) -> rusqlite::Result<usize> {
        let c = self.write.lock().unwrap_or_else(|e| e.into_inner());
        c.execute(
            "DELETE FROM quota_counts WHERE limit_id = ?1 AND window < ?2",
            params![limit_id, to_i64(current_window)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_handles_add_up() {
        let dir = std::env::temp_dir().join(format!("gh-sqlite-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = dir.to_str().unwrap();
        let a = Sqlite::open(d).unwrap();
        let b = Sqlite::open(d).unwrap();
        assert_eq!(a.load("q", b"k", 7).unwrap(), 0);
        assert_eq!(a.add(&[("q", b"k", 7, 3)]).unwrap(), vec![3]);
        assert!(b.changed_elsewhere().unwrap());
        assert_eq!(b.add(&[("q", b"k", 7, 2)]).unwrap(), vec![5]);
        assert!(a.changed_elsewhere().unwrap(), "b committed");
        assert!(!a.changed_elsewhere().unwrap());
        assert_eq!(a.load("q", b"k", 7).unwrap(), 5);
        assert_eq!(
            b.read_many(&[("q", b"k", 7), ("q", b"z", 7)]).unwrap(),
            vec![5, 0]
        );
        assert_eq!(
            a.add(&[("q", b"k", 7, -9)]).unwrap(),
            vec![0],
            "never negative"
        );
        a.add(&[("q", b"old", 6, 1)]).unwrap();
        assert_eq!(a.purge("q", 7).unwrap(), 1);
        drop((a, b));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn trim_drops_past_windows_then_the_least_counted() {
        let dir = std::env::temp_dir().join(format!("gh-sqlite-trim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = Sqlite::open(dir.to_str().unwrap()).unwrap();
        let keys: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let mut rows: Vec<(&str, &[u8], u64, i64)> =
            keys.iter().map(|k| ("q", &k[..], 7, 1)).collect();
        rows.push(("q", b"heavy", 7, 50));
        rows.push(("q", b"old", 6, 90));
        rows.push(("other", b"k", 7, 1));
        db.add(&rows).unwrap();
        assert_eq!(
            db.trim("q", 7, 200, 150).unwrap(),
            101,
            "under the cap: past window only"
        );
        assert_eq!(db.trim("q", 7, 64, 48).unwrap(), 48);
        assert_eq!(
            db.load("q", b"heavy", 7).unwrap(),
            50,
            "the most counted stays"
        );
        assert_eq!(
            db.load("other", b"k", 7).unwrap(),
            1,
            "other limits untouched"
        );
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
