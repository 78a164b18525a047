//! The SQLite side of `halley-test-service` (a module of that binary): a writer that commits a
//! row every 20 ms, and the `migrate`, `check-restored` and `count` commands the Docker
//! scenario's `[state]` table runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The service's database: `$HALLEY_SERVICE_DATA/app.db`.
pub fn db_path() -> PathBuf {
    let dir = std::env::var("HALLEY_SERVICE_DATA").unwrap_or_else(|_| ".".into());
    Path::new(&dir).join("app.db")
}

fn open(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
    )?;
    Ok(conn)
}

/// Starts the writer; the returned counter holds the highest id known committed.
pub fn start_writer() -> Arc<AtomicU64> {
    let committed = Arc::new(AtomicU64::new(0));
    let c = committed.clone();
    std::thread::spawn(move || {
        let conn = match open(&db_path()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("test-service: cannot open {}: {e}", db_path().display());
                return;
            }
        };
        loop {
            match conn.execute("INSERT INTO t (v) VALUES ('row')", []) {
                Ok(_) => c.store(conn.last_insert_rowid() as u64, Ordering::SeqCst),
                Err(e) => eprintln!("test-service: insert failed: {e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    committed
}

/// Runs a command given as the first argument, if it is one; returns whether it was.
pub fn command(args: &[String]) -> bool {
    let result = match args.first().map(String::as_str) {
        Some("migrate") => migrate(),
        Some("check-restored") => check_restored(),
        Some("count") => args
            .get(1)
            .ok_or_else(|| "usage: halley-test-service count DB".to_owned())
            .and_then(|p| count(Path::new(p))),
        _ => return false,
    };
    match result {
        Ok(text) => {
            println!("{text}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}

/// Expands the schema (adds a nullable column), once.
fn migrate() -> Result<String, String> {
    let conn = open(&db_path()).map_err(|e| e.to_string())?;
    let has: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('t') WHERE name = 'note'")
        .and_then(|mut s| s.exists([]))
        .map_err(|e| e.to_string())?;
    if !has {
        conn.execute_batch("ALTER TABLE t ADD COLUMN note TEXT")
            .map_err(|e| format!("migration failed: {e}"))?;
    }
    Ok(format!(
        "migrated {} (column note {})",
        db_path().display(),
        if has { "already there" } else { "added" }
    ))
}

/// The `verify` command: the restored copy has rows.
fn check_restored() -> Result<String, String> {
    let dir = std::env::var("HALLEY_RESTORED").map_err(|_| "HALLEY_RESTORED is not set")?;
    let text = count(&Path::new(&dir).join("app.db"))?;
    if text.starts_with("rows=0 ") {
        return Err(format!("the restored copy is empty: {text}"));
    }
    Ok(text)
}

/// `rows=N max=M note=yes|no`.
fn count(path: &Path) -> Result<String, String> {
    let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    let (rows, max): (i64, i64) = conn
        .query_row("SELECT count(*), coalesce(max(id), 0) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(|e| e.to_string())?;
    let note: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('t') WHERE name = 'note'")
        .and_then(|mut s| s.exists([]))
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "rows={rows} max={max} note={}",
        if note { "yes" } else { "no" }
    ))
}
