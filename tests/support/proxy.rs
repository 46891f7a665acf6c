//! A fault-injecting TCP proxy between sinkgate and PostgreSQL.
//!
//! It forwards bytes both ways and, as the test asks, breaks connections at
//! random points: a reset (RST, both ways) in the middle of any message
//! stream (a `COPY`, a decision, a promotion), a stall of a direction for a
//! while, or a cut right after a `COMMIT` has reached the server, when the
//! server commits and its answer never comes back (the outcome is unknown to
//! sinkgate). It can also be pointed at another server (a promoted standby)
//! and drop every connection it holds, as a failover does.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use super::Rng;

/// Probabilities, per forwarded chunk of bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Reset the connection instead of forwarding the chunk.
    pub reset: f64,
    /// When the chunk carries a `COMMIT`: forward it, then reset the
    /// connection as soon as the server answers, dropping the answer.
    pub cut_after_commit: f64,
    /// Hold the chunk back for `stall_ms` first.
    pub stall: f64,
    pub stall_ms: (u64, u64),
}

/// What the proxy did, for the test's report.
#[derive(Default, Debug)]
pub struct Injected {
    pub connections: AtomicU64,
    pub resets: AtomicU64,
    pub commit_cuts: AtomicU64,
    pub stalls: AtomicU64,
}

struct Shared {
    target: AtomicU16,
    /// Connections are closed as soon as they are accepted.
    refusing: AtomicBool,
    faults: Mutex<Faults>,
    rng: Mutex<Rng>,
    open: Mutex<Vec<AbortHandle>>,
    injected: Injected,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

enum Fault {
    Reset,
    CutAfterCommit,
    Stall(Duration),
}

const COMMIT: &[u8] = b"COMMIT\0";

impl Shared {
    fn draw(&self, chunk: &[u8], client_to_server: bool) -> Option<Fault> {
        let faults = *self.faults.lock().unwrap();
        let mut rng = self.rng.lock().unwrap();
        let mut chance = |p: f64| p > 0.0 && (rng.below(1_000_000) as f64) < p * 1_000_000.0;
        if client_to_server
            && chunk.windows(COMMIT.len()).any(|window| window == COMMIT)
            && chance(faults.cut_after_commit)
        {
            return Some(Fault::CutAfterCommit);
        }
        if chance(faults.reset) {
            return Some(Fault::Reset);
        }
        if chance(faults.stall) {
            let (from, to) = faults.stall_ms;
            return Some(Fault::Stall(rng.millis(from, to.max(from + 1))));
        }
        None
    }
}

impl Proxy {
    /// Listens on a free port and forwards to `127.0.0.1:target`.
    pub async fn start(target: u16, seed_salt: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            target: AtomicU16::new(target),
            refusing: AtomicBool::new(false),
            faults: Mutex::new(Faults::default()),
            rng: Mutex::new(Rng::from_env(seed_salt)),
            open: Mutex::new(Vec::new()),
            injected: Injected::default(),
        });
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if shared.refusing.load(Ordering::SeqCst) {
                        continue;
                    }
                    let target = shared.target.load(Ordering::SeqCst);
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        continue; // the client sees its connection closed
                    };
                    shared.injected.connections.fetch_add(1, Ordering::Relaxed);
                    let task = tokio::spawn(forward(client, server, shared.clone()));
                    let mut open = shared.open.lock().unwrap();
                    open.retain(|handle| !handle.is_finished());
                    open.push(task.abort_handle());
                }
            }
        })
        .abort_handle();
        Proxy {
            port,
            shared,
            accept,
        }
    }

    /// The URL sinkgate connects to, for `database` on the server behind.
    pub fn url(&self, database_url: &str) -> String {
        let (credentials_and_host, database) = database_url.rsplit_once('/').unwrap();
        let (scheme_and_credentials, _) = credentials_and_host.rsplit_once('@').unwrap();
        format!(
            "{scheme_and_credentials}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    /// New connections go to `target` from now on.
    pub fn retarget(&self, target: u16) {
        self.shared.target.store(target, Ordering::SeqCst);
    }

    /// Cuts the path: every open connection is reset and new ones are
    /// closed at once, until [`Proxy::restore`].
    pub fn cut_off(&self) {
        self.shared.refusing.store(true, Ordering::SeqCst);
        self.reset_all();
    }

    pub fn restore(&self) {
        self.shared.refusing.store(false, Ordering::SeqCst);
    }

    /// Resets every open connection.
    pub fn reset_all(&self) {
        for handle in self.shared.open.lock().unwrap().drain(..) {
            handle.abort();
        }
    }

    pub fn injected(&self) -> &Injected {
        &self.shared.injected
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset_all();
    }
}

/// Both directions until either ends or a fault breaks the connection.
async fn forward(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    // Closing with linger 0 sends a reset, as a broken network path or a
    // killed server would, rather than an orderly end of stream.
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let doomed = AtomicBool::new(false);
    tokio::select! {
        () = pump(client_read, server_write, true, &shared, &doomed) => {}
        () = pump(server_read, client_write, false, &shared, &doomed) => {}
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    client_to_server: bool,
    shared: &Shared,
    doomed: &AtomicBool,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        let chunk = &buffer[..read];
        if !client_to_server && doomed.load(Ordering::SeqCst) {
            // The server answered the COMMIT: the answer is lost.
            return;
        }
        match shared.draw(chunk, client_to_server) {
            None => {}
            Some(Fault::Reset) => {
                shared.injected.resets.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Some(Fault::CutAfterCommit) => {
                shared.injected.commit_cuts.fetch_add(1, Ordering::Relaxed);
                doomed.store(true, Ordering::SeqCst);
            }
            Some(Fault::Stall(pause)) => {
                shared.injected.stalls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(pause).await;
            }
        }
        if to.write_all(chunk).await.is_err() {
            return;
        }
    }
}
