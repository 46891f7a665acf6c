//! What a request body may cost while it arrives: time ([`paced`]) and
//! memory ([`metered`]).
//!
//! A streamed NDJSON upload holds a transaction and a pooled connection
//! while it lasts; a buffered JSON body holds its bytes until the handler is
//! done. So every body must keep arriving (an idle limit and a minimum
//! average rate), and the bytes of buffered bodies count against one budget
//! for the whole process, as they arrive: a body that stalls holds only what
//! it sent, and one that would overrun the budget ends with 503
//! `overloaded`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// How fast a body must arrive.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Longest silence; also the grace before the rate is enforced.
    pub idle: Duration,
    /// Slowest average rate after the grace; 0 turns it off.
    pub min_bytes_per_second: u64,
}

/// Ends a body stream with 408 `body-timeout` when no bytes arrive for
/// `pace.idle`, or when fewer than `pace.min_bytes_per_second × idle` bytes
/// arrive in any `idle` of waiting for them. The windows are consecutive
/// (a fast start banks nothing for a trickle later), and only time spent
/// waiting for the client counts (not the server's own waits for a write
/// slot or a lock between reads).
pub fn paced(
    body: impl Stream<Item = Result<Bytes>> + Send + Unpin + 'static,
    pace: Pace,
) -> impl Stream<Item = Result<Bytes>> + Send {
    let Pace {
        idle,
        min_bytes_per_second,
    } = pace;
    let per_window = (min_bytes_per_second as f64 * idle.as_secs_f64()) as u64;
    let window = Window::default();
    futures::stream::unfold(Some((body, window)), move |state| async move {
        let (mut body, mut window) = state?;
        // Time left in this window before its bytes must be in.
        let short = per_window > 0 && window.bytes < per_window;
        let window_left = idle.saturating_sub(window.waited);
        let wait = if short { idle.min(window_left) } else { idle };
        let asked = tokio::time::Instant::now();
        match tokio::time::timeout(wait, body.next()).await {
            Ok(Some(Ok(chunk))) => {
                window.waited += asked.elapsed();
                window.bytes += chunk.len() as u64;
                if window.waited >= idle {
                    if per_window > 0 && window.bytes < per_window {
                        return Some((Err(too_slow(min_bytes_per_second, &window)), None));
                    }
                    window = Window::default();
                }
                Some((Ok(chunk), Some((body, window))))
            }
            Ok(Some(Err(error))) => Some((Err(error), None)),
            Ok(None) => None,
            Err(_) if short && wait == window_left => {
                window.waited += wait;
                Some((Err(too_slow(min_bytes_per_second, &window)), None))
            }
            Err(_) => Some((
                Err(Error::BodyTimeout(format!(
                    "no body bytes arrived for {} ms",
                    idle.as_millis()
                ))),
                None,
            )),
        }
    })
}

/// Bytes received, and time spent waiting for them, in the current window.
#[derive(Default)]
struct Window {
    bytes: u64,
    waited: Duration,
}

fn too_slow(min_bytes_per_second: u64, window: &Window) -> Error {
    Error::BodyTimeout(format!(
        "the body arrived slower than {min_bytes_per_second} bytes/s ({} bytes in {} ms)",
        window.bytes,
        window.waited.as_millis()
    ))
}

/// Bodies up to this size are not counted against the budget: the
/// in-flight limit bounds what they can hold together.
pub const FREE_BYTES: usize = 64 * 1024;

/// The budget of buffered body bytes, in KiB, shared by every request.
#[derive(Clone)]
pub struct Budget(Arc<Semaphore>);

impl Budget {
    pub fn new(bytes: usize) -> Budget {
        Budget(Arc::new(Semaphore::new(bytes.div_ceil(1024))))
    }
}

/// What one request holds of the [`Budget`]: released when it is dropped
/// (the caller keeps it until the request is answered, since the handler
/// keeps the buffered bytes until then).
#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

/// Counts a body's bytes against `budget` as they arrive (past the first
/// [`FREE_BYTES`]), into `held`; a chunk the budget cannot take ends the
/// body with 503 `overloaded`.
pub fn metered(
    body: impl Stream<Item = Result<Bytes>> + Send + Unpin + 'static,
    budget: Budget,
    held: Held,
) -> impl Stream<Item = Result<Bytes>> + Send {
    let mut received = 0usize;
    let mut reserved_kib = 0u32;
    body.map(move |chunk| {
        let chunk = chunk?;
        received += chunk.len();
        let needed_kib =
            u32::try_from(received.saturating_sub(FREE_BYTES).div_ceil(1024)).unwrap_or(u32::MAX);
        if needed_kib > reserved_kib {
            let more = budget
                .0
                .clone()
                .try_acquire_many_owned(needed_kib - reserved_kib)
                .map_err(|_| Error::Overloaded)?;
            let mut holding = held
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match holding.as_mut() {
                Some(permit) => permit.merge(more),
                None => *holding = Some(more),
            }
            reserved_kib = needed_kib;
        }
        Ok(chunk)
    })
}

/// The error a body stream ended with (a [`paced`] or [`metered`] one), if
/// that is what a failure to read a body came from.
pub fn failure(error: &(dyn std::error::Error + 'static)) -> Option<Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        match current.downcast_ref::<Error>() {
            Some(Error::BodyTimeout(detail)) => return Some(Error::BodyTimeout(detail.clone())),
            Some(Error::Overloaded) => return Some(Error::Overloaded),
            _ => cause = current.source(),
        }
    }
    None
}
