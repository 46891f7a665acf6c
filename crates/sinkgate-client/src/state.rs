//! Saving and restoring state in sinkgate's state store.
//!
//! A state is cut into chunks by content (FastCDC, from the `fastcdc`
//! crate: a boundary depends on the bytes around it, so an edit changes the
//! chunks it touches and not every chunk after it), each named by its
//! SHA-256. Saving asks the store which chunks it lacks and uploads only
//! those, a group of chunks at a time (memory stays bounded by the group,
//! whatever the state's size); restoring downloads the chunks in order and
//! checks each against its name.

use std::collections::HashSet;
use std::io::Read;

use futures::stream::{self, StreamExt};
use sha2::{Digest, Sha256};
use sinkgate_api::StoredState;

use crate::{Client, Error, Result};

/// Chunk sizes: at least, on average, at most.
pub const MIN_CHUNK: u32 = 256 * 1024;
pub const AVG_CHUNK: u32 = 1024 * 1024;
pub const MAX_CHUNK: u32 = 4 * 1024 * 1024;

/// Chunks are checked against the store and uploaded in groups of about
/// this many bytes (the most a save holds in memory, beside the state).
const GROUP_BYTES: usize = 32 * 1024 * 1024;

/// Chunks uploaded or downloaded at once (each is a round trip; the
/// service and the database work on the others meanwhile).
const IN_FLIGHT: usize = 4;

/// What a save did.
#[derive(Debug, Clone)]
pub struct Saved {
    /// What the ack's `state.stored` says.
    pub stored: StoredState,
    /// Chunks (and their bytes) the store lacked, so uploaded now.
    pub uploaded_chunks: usize,
    pub uploaded_bytes: u64,
}

/// SHA-256, lowercase hex: a chunk's name.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The chunks of a state in memory.
pub fn chunks_of(state: &[u8]) -> impl Iterator<Item = Result<Vec<u8>>> + '_ {
    fastcdc::v2020::FastCDC::new(state, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
        .map(move |chunk| Ok(state[chunk.offset..chunk.offset + chunk.length].to_vec()))
}

/// The chunks of a state read from `reader`, one at a time.
pub fn chunks_of_reader<R: Read>(reader: R) -> impl Iterator<Item = Result<Vec<u8>>> {
    fastcdc::v2020::StreamCDC::new(reader, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK).map(|chunk| {
        chunk
            .map(|chunk| chunk.data)
            .map_err(|error| Error::Io(error.to_string()))
    })
}

/// Uploads what the store lacks of `chunks`; answers the stored state.
pub async fn save(client: &Client, chunks: impl Iterator<Item = Result<Vec<u8>>>) -> Result<Saved> {
    let mut saved = Saved {
        stored: StoredState {
            chunks: Vec::new(),
            size_bytes: 0,
        },
        uploaded_chunks: 0,
        uploaded_bytes: 0,
    };
    let mut group: Vec<(String, Vec<u8>)> = Vec::new();
    let mut group_bytes = 0;
    for chunk in chunks {
        let chunk = chunk?;
        let name = sha256_hex(&chunk);
        saved.stored.chunks.push(name.clone());
        saved.stored.size_bytes += chunk.len() as u64;
        group_bytes += chunk.len();
        group.push((name, chunk));
        if group_bytes >= GROUP_BYTES {
            upload_missing(client, &mut group, &mut saved).await?;
            group_bytes = 0;
        }
    }
    upload_missing(client, &mut group, &mut saved).await?;
    Ok(saved)
}

async fn upload_missing(
    client: &Client,
    group: &mut Vec<(String, Vec<u8>)>,
    saved: &mut Saved,
) -> Result<()> {
    if group.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = group.iter().map(|(name, _)| name.clone()).collect();
    let mut missing: HashSet<String> = client.missing_chunks(&names).await?.into_iter().collect();
    // A chunk that appears twice is uploaded once.
    let uploads: Vec<(String, Vec<u8>)> = group
        .drain(..)
        .filter(|(name, _)| missing.remove(name))
        .collect();
    let mut puts = stream::iter(uploads)
        .map(|(name, chunk)| async move { client.put_chunk(&name, &chunk).await })
        .buffer_unordered(IN_FLIGHT);
    while let Some(stored) = puts.next().await {
        saved.uploaded_chunks += 1;
        saved.uploaded_bytes += stored?.size_bytes;
    }
    Ok(())
}

/// Downloads the chunks of `stored` in order, each checked, into `sink`.
pub async fn restore(
    client: &Client,
    stored: &StoredState,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut size = 0u64;
    // Downloaded a few ahead, handed over in order.
    let mut chunks = stream::iter(stored.chunks.clone())
        .map(|name| async move { client.get_chunk(&name).await })
        .buffered(IN_FLIGHT);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        sink(&chunk)?;
    }
    if size != stored.size_bytes {
        return Err(Error::Decode(format!(
            "the restored state is {size} bytes, not {}",
            stored.size_bytes
        )));
    }
    Ok(())
}
