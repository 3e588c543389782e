//! A throwaway PostgreSQL cluster per test: `initdb` in a temporary directory, the server
//! reachable only through a Unix socket in that directory (no TCP), stopped and deleted when
//! the [`Cluster`] is dropped. It mirrors `scripts/pg-throwaway.sh`:
//!
//! - the server binaries are the newest `/usr/lib/postgresql/*/bin`, else `initdb` and
//!   `pg_ctl` on `PATH`;
//! - PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user
//!   (`nobody` if there is none): the directory is handed to that user and `initdb`/`pg_ctl`
//!   run through `runuser -u USER --`;
//! - the server keeps its durability defaults (`fsync`, `synchronous_commit` on);
//! - [`Cluster::start_configured`] adds settings and `pg_hba.conf` lines (a primary with a
//!   `replication` entry), and [`Cluster::standby`] makes a standby of a running cluster by
//!   `pg_basebackup --write-recovery-conf`, in a directory and on a port of its own.
//!
//! With no server installed, [`Cluster::start`] prints one line and answers `None`, and the
//! test passes without running — unless `PAYLEDGER_PG_REQUIRED` is set (CI sets it, after
//! installing the server), which makes that a failure.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use payledger_postgres::postgres;
use payledger_postgres::{PgOptions, PgStore};

/// Set to make a missing server a test failure instead of a skip.
pub const REQUIRED_ENV: &str = "PAYLEDGER_PG_REQUIRED";

/// A running throwaway cluster.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The user the server runs as, when this process is root.
    run_as: Option<String>,
    /// The server's settings, as `pg_ctl --options`.
    options: String,
}

impl Cluster {
    /// Starts a cluster with the default settings, or `None` when no server is installed.
    pub fn start() -> Option<Cluster> {
        Self::start_with(&[])
    }

    /// Starts a cluster with `settings` (`-c name=value`) over the defaults.
    pub fn start_with(settings: &[(&str, &str)]) -> Option<Cluster> {
        Self::start_configured(settings, &[])
    }

    /// Starts a cluster with `settings` over the defaults and `hba_lines` appended to its
    /// `pg_hba.conf` (e.g. a `replication` entry for a standby), or `None` when no server is
    /// installed.
    pub fn start_configured(settings: &[(&str, &str)], hba_lines: &[&str]) -> Option<Cluster> {
        let mut cluster = Self::empty()?;
        cluster.run(
            "initdb",
            &[
                &format!("--pgdata={}", cluster.data().display()),
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                // Only the initialisation skips fsync; the server keeps it on.
                "--no-sync",
            ],
        );
        if !hba_lines.is_empty() {
            let mut hba = std::fs::OpenOptions::new()
                .append(true)
                .open(cluster.data().join("pg_hba.conf"))
                .unwrap();
            for line in hba_lines {
                writeln!(hba, "{line}").unwrap();
            }
        }
        cluster.set_options(settings);
        cluster.start_again();
        Some(cluster)
    }

    /// Starts a standby of this (running) cluster, under the name `application_name`: a new
    /// directory and port, `pg_basebackup --write-recovery-conf` (which writes
    /// `standby.signal` and a `primary_conninfo`), then a `primary_conninfo` that names the
    /// standby `application_name` (what `synchronous_standby_names` lists), and the server
    /// started with the default settings and `settings` over them.
    pub fn standby(&self, application_name: &str, settings: &[(&str, &str)]) -> Cluster {
        let mut standby = Self::empty().expect("a server is installed: its primary is running");
        let conninfo = format!(
            "host={} port={} user=postgres application_name={application_name}",
            self.dir().display(),
            self.port
        );
        standby.run(
            "pg_basebackup",
            &[
                &format!("--pgdata={}", standby.data().display()),
                &format!("--dbname={conninfo}"),
                "--write-recovery-conf",
                "--wal-method=stream",
                "--checkpoint=fast",
                // As `initdb --no-sync`: the copy's files are not flushed; the standby's own
                // WAL flushes (what synchronous replication waits for) are.
                "--no-sync",
            ],
        );
        // `--write-recovery-conf` copies the connection's parameters; say it outright, last
        // in the file so that it wins.
        let mut auto = std::fs::OpenOptions::new()
            .append(true)
            .open(standby.data().join("postgresql.auto.conf"))
            .unwrap();
        writeln!(auto, "primary_conninfo = '{conninfo}'").unwrap();
        assert!(standby.data().join("standby.signal").is_file());
        standby.set_options(settings);
        standby.start_again();
        standby
    }

    /// A cluster not yet initialised: its private directory (the server user's) and a port;
    /// `None`, after one line on stderr, when no server is installed.
    fn empty() -> Option<Cluster> {
        let Some(bin) = server_bin() else {
            if std::env::var_os(REQUIRED_ENV).is_some() {
                panic!("{REQUIRED_ENV} is set but no PostgreSQL server (initdb) was found");
            }
            static SKIP: Once = Once::new();
            SKIP.call_once(|| {
                // Straight to the process's stderr: the test harness captures `eprintln!`.
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping PostgreSQL tests: no initdb found; apt-get install postgresql"
                );
            });
            return None;
        };
        let run_as = server_user();
        let dir = scratch_dir();
        if let Some(user) = &run_as {
            let (uid, gid) = (id(&["-u", user]), id(&["-g", user]));
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        // The socket's file is named after the port, in a private directory, so any port
        // would do; a free one keeps older servers' port-derived SysV IPC keys apart too.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Some(Cluster {
            dir,
            bin,
            port,
            run_as,
            options: String::new(),
        })
    }

    /// The server's settings: the defaults, `settings` over them.
    fn set_options(&mut self, settings: &[(&str, &str)]) {
        let mut options: Vec<(String, String)> = [
            ("listen_addresses", "''".to_string()),
            (
                "unix_socket_directories",
                format!("'{}'", self.dir.path().display()),
            ),
            ("port", self.port.to_string()),
            ("max_connections", "100".to_string()),
            ("fsync", "on".to_string()),
            ("synchronous_commit", "on".to_string()),
            ("full_page_writes", "on".to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
        for (name, value) in settings {
            options.retain(|(n, _)| n != name);
            options.push((name.to_string(), value.to_string()));
        }
        self.options = options
            .iter()
            .map(|(name, value)| format!("-c {name}={value}"))
            .collect::<Vec<_>>()
            .join(" ");
    }

    /// The directory the cluster lives in (data, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The libpq connection string of the cluster's `postgres` database.
    pub fn params(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.path().display(),
            self.port
        )
    }

    /// The client configuration of the cluster's `postgres` database.
    pub fn config(&self) -> postgres::Config {
        let mut config = postgres::Config::new();
        config
            .host_path(self.dir.path())
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// A plain client, for the tests' own SQL.
    pub fn admin(&self) -> postgres::Client {
        self.config().connect(postgres::NoTls).unwrap()
    }

    /// A migrated store with the default options.
    pub fn store(&self) -> PgStore {
        self.store_with(PgOptions::default())
    }

    /// A migrated store with `options`.
    pub fn store_with(&self, options: PgOptions) -> PgStore {
        let store = PgStore::connect_with(self.config(), options).unwrap();
        store.migrate().unwrap();
        store
    }

    /// `pg_ctl restart -m fast`: in-flight sessions are ended, the server comes back.
    pub fn restart(&self) {
        self.pg_ctl(&["--mode=fast", "restart"]);
    }

    /// `pg_ctl stop -m fast`.
    pub fn stop(&self) {
        self.pg_ctl(&["--mode=fast", "stop"]);
    }

    /// `pg_ctl stop -m immediate`: the server quits without a shutdown checkpoint, as if the
    /// machine lost power (what it acknowledged is in its WAL, and a synchronous standby's).
    pub fn stop_immediately(&self) {
        self.pg_ctl(&["--mode=immediate", "stop"]);
    }

    /// `pg_ctl promote`: a standby ends recovery and accepts writes (`--wait`: once it does).
    pub fn promote(&self) {
        self.pg_ctl(&["promote"]);
    }

    /// `pg_ctl start` (after [`Cluster::stop`]), with the cluster's settings.
    pub fn start_again(&self) {
        self.pg_ctl(&[&format!("--options={}", self.options), "start"]);
    }

    /// Waits until a new connection sees `setting` at `value` (after `pg_reload_conf()`).
    pub fn wait_for_setting(&self, setting: &str, value: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let row = self
                .admin()
                .query_one("SELECT current_setting($1)", &[&setting])
                .unwrap();
            if row.get::<_, String>(0) == value {
                return;
            }
            assert!(Instant::now() < deadline, "{setting} never became {value}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = format!("--pgdata={}", self.data().display());
        let log = format!("--log={}", self.dir.path().join("server.log").display());
        let mut all = vec![data.as_str(), log.as_str(), "--wait"];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    /// Runs one of the server's programs as the server's user, from the cluster's directory
    /// (which that user can enter); panics with its output and the server log on failure.
    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&program);
                command
            }
            None => Command::new(&program),
        };
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        if !output.status.success() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            panic!(
                "{} {args:?} failed: {}\n{}{}\nserver log:\n{log}",
                program.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = format!("--pgdata={}", self.data().display());
        let program = self.bin.join("pg_ctl");
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&program);
                command
            }
            None => Command::new(&program),
        };
        // A stopped server (a test that stopped it) answers with an error: nothing to do.
        let _ = command
            .args([data.as_str(), "--mode=fast", "--wait", "stop"])
            .current_dir(self.dir.path())
            .output();
        // The temporary directory is deleted by its own drop.
    }
}

/// The newest installed server's bin directory: `/usr/lib/postgresql/<version>/bin`, else the
/// directory on `PATH` holding `initdb` and `pg_ctl`.
fn server_bin() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version: Vec<u32> = name
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin);
    newest.or_else(|| std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| has_tools(dir)))
}

/// The user the server runs as when this process is root (never root), else `None`.
fn server_user() -> Option<String> {
    if id(&["-u"]) != 0 {
        return None;
    }
    let postgres = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .is_ok_and(|o| o.status.success());
    Some(if postgres { "postgres" } else { "nobody" }.to_string())
}

/// `id ARGS` as a number.
fn id(args: &[&str]) -> u32 {
    let output = Command::new("id").args(args).output().unwrap();
    assert!(output.status.success(), "id {args:?} failed");
    String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A new private directory short enough for a Unix socket path (108 bytes) inside it.
fn scratch_dir() -> tempfile::TempDir {
    let base = std::env::temp_dir();
    let base = if base.as_os_str().len() > 60 {
        PathBuf::from("/tmp")
    } else {
        base
    };
    tempfile::Builder::new()
        .prefix("payledger-pg.")
        .tempdir_in(base)
        .unwrap()
}

/// Panics after `timeout` unless `done` became true.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
