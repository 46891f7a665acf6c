//! A PostgreSQL cluster of the test's own (`scripts/pg-cluster.sh`), which
//! the test may crash, kill, restart or promote without touching the
//! database every other test uses.

use std::path::Path;

/// A running cluster; destroyed (stopped, files removed) when dropped.
pub struct Cluster {
    pub name: String,
    pub port: u16,
}

fn script(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-cluster.sh");
    let status = std::process::Command::new(&script)
        .args(args)
        .status()
        .expect("run scripts/pg-cluster.sh");
    assert!(status.success(), "scripts/pg-cluster.sh {args:?} failed");
}

impl Cluster {
    /// A new primary with role and database `sinkgate`.
    pub fn create(name: &str, port: u16) -> Cluster {
        script(&["create", name, &port.to_string()]);
        Cluster {
            name: name.to_owned(),
            port,
        }
    }

    /// A synchronous standby of `primary`: a commit on the primary returns
    /// only once this one has flushed it.
    pub fn standby_of(primary: &Cluster, name: &str, port: u16) -> Cluster {
        Cluster::standby(name, port, primary.port, "sync")
    }

    /// An asynchronous standby streaming from the primary reached on
    /// `upstream` (the primary's port, or a proxy in front of it): commits
    /// do not wait for it, and it may lag.
    pub fn async_standby(name: &str, port: u16, upstream: u16) -> Cluster {
        Cluster::standby(name, port, upstream, "async")
    }

    fn standby(name: &str, port: u16, upstream: u16, mode: &str) -> Cluster {
        script(&[
            "standby",
            name,
            &port.to_string(),
            &upstream.to_string(),
            mode,
        ]);
        Cluster {
            name: name.to_owned(),
            port,
        }
    }

    /// The URL sinkgate connects to.
    pub fn url(&self) -> String {
        format!("postgres://sinkgate@127.0.0.1:{}/sinkgate", self.port)
    }

    /// `pg_ctl stop -m immediate`: every process quits at once, no shutdown
    /// checkpoint; the next start runs crash recovery.
    pub fn crash(&self) {
        script(&["crash", &self.name]);
    }

    /// SIGKILL of the postmaster and its backends.
    pub fn kill(&self) {
        script(&["kill", &self.name]);
    }

    pub fn start(&self) {
        script(&["start", &self.name]);
    }

    pub fn promote(&self) {
        script(&["promote", &self.name]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        script(&["destroy", &self.name]);
    }
}
