//! The command-hook path of state safety against a real PostgreSQL server that this test starts
//! itself (Debian's `postgresql` package; `.ci/run` installs it where it can): `backup` runs
//! pg_dump, `verify` restores the dump into a scratch database and counts rows, `restore` runs
//! pg_restore.

use std::path::{Path, PathBuf};
use std::process::Command;

use halley_tests::{Node, assert_ok, free_tcp_port, stderr};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");

/// The newest PostgreSQL server binaries installed, if any.
fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// A PostgreSQL server in a temp dir, on a unix socket only; stopped when dropped.
struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            // The server refuses to run as root; Debian's package made the `postgres` user.
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn start(root: &Path) -> Self {
        let bin = pg_bin().expect("PostgreSQL binaries");
        let dir = root.join("pg");
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = unsafe { libc::geteuid() } == 0;
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success());
            // The temp dir itself must let the postgres user through.
            let status = Command::new("chmod").arg("755").arg(root).status().unwrap();
            assert!(status.success());
        }
        let pg = Self {
            bin,
            dir,
            port: free_tcp_port(),
            as_postgres,
        };
        let out = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(pg.dir.join("data"))
            .output()
            .unwrap();
        assert_ok(&out, "initdb");
        let options = format!(
            "-k {} -p {} -c listen_addresses=''",
            pg.dir.display(),
            pg.port
        );
        let out = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(pg.dir.join("data"))
            .args(["-o", &options, "-w", "-l"])
            .arg(pg.dir.join("log"))
            .arg("start")
            .output()
            .unwrap();
        assert_ok(&out, "pg_ctl start");
        pg
    }

    /// `-h SOCKET_DIR -p PORT -U postgres` for the client tools.
    fn conn(&self) -> String {
        format!("-h {} -p {} -U postgres", self.dir.display(), self.port)
    }

    fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(self.conn().split(' '))
            .args(["-d", db, "-tAc", sql])
            .output()
            .unwrap();
        assert_ok(&out, sql);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

#[test]
fn pg_dump_and_pg_restore_hooks_back_up_verify_and_restore_a_real_database() {
    if pg_bin().is_none() {
        eprintln!(
            "SKIPPED: no PostgreSQL server binaries under /usr/lib/postgresql (Debian package `postgresql`); .ci/run installs it where it can"
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pg = Postgres::start(root.path());
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE t (id serial PRIMARY KEY, v text); INSERT INTO t (v) VALUES ('a'), ('b'), ('c')",
    );

    let mut node = Node::new(root.path(), "n1");
    node.init();
    node.start_with(&["--service-address", "127.0.0.1"]);
    let bin = pg.bin.display().to_string();
    let conn = pg.conn();
    let config = root.path().join("halley.toml");
    std::fs::write(
        &config,
        format!(
            r#"[service.web]
command = ["./halley-test-service"]
listen = ":{port}"
[service.web.state]
backup = ["sh", "-c", "{bin}/pg_dump {conn} -Fc -f \"$HALLEY_BACKUP_DIR/app.dump\" app"]
restore = ["sh", "-c", "{bin}/pg_restore {conn} --clean --if-exists -d app \"$HALLEY_BACKUP_DIR/app.dump\""]
verify = ["sh", "-c", "{bin}/createdb {conn} scratch && {bin}/pg_restore {conn} -d scratch \"$HALLEY_BACKUP_DIR/app.dump\" && n=$({bin}/psql {conn} -d scratch -tAc 'SELECT count(*) FROM t'); {bin}/dropdb {conn} scratch; test \"$n\" = 3"]
[service.web.health]
http = "/health"
interval = "100ms"
[service.web.rollout]
drain_wait = "0s"
bake = "0s"
"#,
            port = free_tcp_port()
        ),
    )
    .unwrap();
    assert_ok(
        &node.deploy(&config, "web", "v1", Path::new(SERVICE_BIN)),
        "deploy v1",
    );
    let out = node.cli(&["backup", "create", "web"]);
    assert_ok(&out, "backup create through pg_dump");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("verify command passed"), "{said}");
    let id = said.split_whitespace().nth(1).unwrap().to_owned();

    pg.psql("app", "INSERT INTO t (v) VALUES ('d'), ('e')");
    assert_eq!(pg.psql("app", "SELECT count(*) FROM t"), "5");
    let out = node.cli(&["backup", "restore", "web", &id, "--yes"]);
    assert_ok(&out, "backup restore through pg_restore");
    assert_eq!(pg.psql("app", "SELECT count(*) FROM t"), "3");

    // A dump that no longer matches its recorded hash is refused before pg_restore runs.
    let dump = node.dir.join("backups/web").join(&id).join("hook/app.dump");
    let mut bytes = std::fs::read(&dump).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&dump, bytes).unwrap();
    pg.psql("app", "INSERT INTO t (v) VALUES ('f')");
    let out = node.cli(&["backup", "restore", "web", &id, "--yes"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("corrupt"), "{}", stderr(&out));
    assert_eq!(pg.psql("app", "SELECT count(*) FROM t"), "4");
}
