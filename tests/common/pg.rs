//! PostgreSQL for the tests: a real server on a loopback port, started by
//! `scripts/postgres.sh` in a temp folder, and a fresh database per daemon.
//!
//! `SWITCHBOARD_TEST_POSTGRES` (an admin URL, set by `scripts/test.sh` for
//! its PostgreSQL pass) makes every [`super::Setup`] use a new database on
//! that server instead of SQLite, so the whole suite runs on both backends.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The admin URL of the server the whole suite runs against, if any.
pub fn suite_server() -> Option<String> {
    std::env::var("SWITCHBOARD_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A PostgreSQL server of its own, stopped on drop.
pub struct PgServer {
    dir: tempfile::TempDir,
    /// `postgres://switchboard@127.0.0.1:<port>/postgres`
    pub admin_url: String,
}

impl PgServer {
    pub fn start() -> PgServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let out = script(&[
            "start",
            &dir.path().display().to_string(),
            &port.to_string(),
        ]);
        let admin_url = String::from_utf8(out).unwrap().trim().to_owned();
        PgServer { dir, admin_url }
    }

    /// Stops the server (fast shutdown: connections are cut) and starts it again.
    pub fn stop(&self) {
        script(&["stop", &self.dir.path().display().to_string()]);
    }

    /// The server's folder, for [`start_again_at`] from another thread.
    pub fn dir(&self) -> std::path::PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        script(&["stop", &self.dir.path().display().to_string()]);
    }
}

/// Starts the stopped server in `dir` again, on its port.
pub fn start_again_at(dir: &Path) {
    script(&["restart", &dir.display().to_string()]);
}

fn script(args: &[&str]) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh");
    let out = Command::new("bash")
        .arg(path)
        .args(args)
        .output()
        .expect("run scripts/postgres.sh");
    assert!(
        out.status.success(),
        "scripts/postgres.sh {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Creates an empty database on the server at `admin_url`; returns its URL.
pub fn create_database(admin_url: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "sb_{}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    psql(admin_url, &format!("CREATE DATABASE {name}"));
    let base = admin_url.rsplit_once('/').expect("URL with a database").0;
    format!("{base}/{name}")
}

/// Runs one SQL statement with psql; returns its unaligned output. psql,
/// not the `postgres` client: tests run inside a tokio runtime, where the
/// blocking client cannot start its own.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
