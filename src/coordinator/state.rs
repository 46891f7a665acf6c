//! The checkpoint's other half: state (`docs/DESIGN.md`, "State").
//!
//! - **The state store.** A task cuts its state into chunks (the clients
//!   cut by content, so an edit changes the chunks around it, not every
//!   chunk after it), asks which the store lacks, uploads those, and acks
//!   with the list. Chunks are content-addressed per job: a chunk that an
//!   earlier checkpoint uploaded costs nothing again, which makes every
//!   checkpoint incremental. Each request holds at most one chunk in
//!   memory, whatever the state's size. A chunk is checked against its
//!   SHA-256 on upload and on every download: a corrupted one is refused,
//!   never served.
//! - **References.** An ack records which chunks (and which external
//!   objects) its state uses; the records go with the ack, which retention
//!   prunes and savepoints keep. A chunk nothing references, and that no
//!   task touched within the grace period, is collected by the scheduler.
//! - **Shared external state.** Objects a task keeps in its own store are
//!   registered by the acks that list them; sinkgate answers which ones no
//!   retained ack references, and once the owner says it released one, no
//!   ack may reference it again (so a deletion never races a new use).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use super::{load_job, JobLock};
use crate::error::{Error, Result};
use crate::model::{StateHandle, StoredChunk};

/// Largest chunk accepted (the clients cut chunks of 256 KiB to 4 MiB).
pub const MAX_CHUNK_BYTES: usize = 16 << 20;

/// Most chunk ids (or object URIs) in one request or one ack.
pub const MAX_IDS: usize = 100_000;

/// Longest URI of a shared external object (it is a key of the registry,
/// and PostgreSQL's index entries hold at most about 2.7 KB).
pub const MAX_URI_BYTES: usize = 2000;

/// A chunk id: SHA-256 as 64 lowercase hex digits.
pub fn parse_sha256(field: &str, text: &str) -> Result<[u8; 32]> {
    let valid = text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !valid {
        return Err(Error::validation(
            field,
            format!("{text:?} is not a SHA-256 in lowercase hex (64 characters)"),
        ));
    }
    let mut digest = [0u8; 32];
    for (index, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16)
            .map_err(|_| Error::validation(field, "not hex"))?;
    }
    Ok(digest)
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn too_many(field: &str, count: usize) -> Result<()> {
    if count > MAX_IDS {
        return Err(Error::validation(
            field,
            format!("{count} entries; at most {MAX_IDS}"),
        ));
    }
    Ok(())
}

/// `POST /state/chunks/missing`: which of `chunks` the store lacks, in the
/// order asked. Those it holds count as used now, so the collector leaves
/// them alone while the task goes on to reference them.
pub async fn missing(
    conn: &mut PgConnection,
    job_id: &str,
    chunks: &[String],
) -> Result<Vec<String>> {
    too_many("chunks", chunks.len())?;
    let mut digests = Vec::with_capacity(chunks.len());
    for (index, chunk) in chunks.iter().enumerate() {
        digests.push(parse_sha256(&format!("chunks[{index}]"), chunk)?.to_vec());
    }
    load_job(&mut *conn, job_id, JobLock::None).await?;
    let held: HashSet<Vec<u8>> = sqlx::query_scalar!(
        "UPDATE state_chunks SET last_used_at = now()
         WHERE job_id = $1 AND sha256 = ANY ($2) AND corrupted_at IS NULL RETURNING sha256",
        job_id,
        &digests
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let mut seen = HashSet::new();
    Ok(chunks
        .iter()
        .zip(&digests)
        .filter(|(_, digest)| !held.contains(*digest) && seen.insert(*digest))
        .map(|(chunk, _)| chunk.clone())
        .collect())
}

/// `PUT /state/chunks/{sha256}`: stores a chunk whose content matches its
/// id; storing one the store holds changes nothing.
pub async fn put_chunk(
    conn: &mut PgConnection,
    job_id: &str,
    sha256: &str,
    content: Bytes,
) -> Result<StoredChunk> {
    let digest = parse_sha256("sha256", sha256)?;
    if content.len() > MAX_CHUNK_BYTES {
        return Err(Error::PayloadTooLarge(format!(
            "a chunk is at most {MAX_CHUNK_BYTES} bytes; this one is {}",
            content.len()
        )));
    }
    let actual: [u8; 32] = Sha256::digest(&content).into();
    if actual != digest {
        return Err(Error::validation(
            "sha256",
            format!(
                "the body's SHA-256 is {}, not the {sha256} the path names",
                hex(&actual)
            ),
        ));
    }
    load_job(&mut *conn, job_id, JobLock::KeyShare).await?;
    let created: bool = sqlx::query_scalar!(
        r#"INSERT INTO state_chunks (job_id, sha256, size_bytes, content) VALUES ($1, $2, $3, $4)
           ON CONFLICT (job_id, sha256) DO UPDATE SET last_used_at = now(),
               -- A chunk found corrupted is repaired by the next upload of it.
               content = CASE WHEN state_chunks.corrupted_at IS NULL THEN state_chunks.content ELSE EXCLUDED.content END,
               corrupted_at = NULL
           RETURNING xmax = 0 AS "created!""#,
        job_id,
        &digest[..],
        content.len() as i32,
        &content[..]
    )
    .fetch_one(&mut *conn)
    .await?;
    crate::metrics::state_chunk_stored(job_id, created, content.len() as u64);
    Ok(StoredChunk {
        sha256: sha256.to_owned(),
        size_bytes: content.len() as u64,
        created,
    })
}

/// `GET /state/chunks/{sha256}`: a chunk's content, once it matches its id.
pub async fn get_chunk(conn: &mut PgConnection, job_id: &str, sha256: &str) -> Result<Bytes> {
    let digest = parse_sha256("sha256", sha256)?;
    load_job(&mut *conn, job_id, JobLock::None).await?;
    let content: Vec<u8> = sqlx::query_scalar!(
        "SELECT content FROM state_chunks WHERE job_id = $1 AND sha256 = $2",
        job_id,
        &digest[..]
    )
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| Error::not_found(format!("job {job_id:?} has no state chunk {sha256}")))?;
    let actual: [u8; 32] = Sha256::digest(&content).into();
    if actual != digest {
        tracing::error!(job = job_id, chunk = sha256, actual = %hex(&actual), "a stored state chunk is corrupted");
        // Reported missing from now on: the next save uploads it again,
        // which repairs it (for every checkpoint that shares it).
        sqlx::query!(
            "UPDATE state_chunks SET corrupted_at = coalesce(corrupted_at, now())
             WHERE job_id = $1 AND sha256 = $2",
            job_id,
            &digest[..]
        )
        .execute(&mut *conn)
        .await?;
        return Err(Error::StateCorrupted(format!(
            "state chunk {sha256} of job {job_id:?} is corrupted in the database (its content hashes to {}); restore from an older checkpoint or savepoint",
            hex(&actual)
        )));
    }
    Ok(Bytes::from(content))
}

/// Records what the state of a new ack uses: its stored chunks (which must
/// be in the store, and add up to its `size_bytes`) and its external
/// objects (which must not have been released). In the ack's transaction,
/// after its row is written.
pub async fn record_references(
    conn: &mut PgConnection,
    job_id: &str,
    checkpoint_id: i64,
    task_id: &str,
    state: &StateHandle,
) -> Result<()> {
    if let Some(stored) = &state.stored {
        too_many("state.stored.chunks", stored.chunks.len())?;
        let mut digests = Vec::with_capacity(stored.chunks.len());
        for (index, chunk) in stored.chunks.iter().enumerate() {
            digests.push(parse_sha256(&format!("state.stored.chunks[{index}]"), chunk)?.to_vec());
        }
        // Share-locked: the collector cannot delete them before this commits.
        let sizes: BTreeMap<Vec<u8>, i32> = sqlx::query!(
            "SELECT sha256, size_bytes FROM state_chunks
             WHERE job_id = $1 AND sha256 = ANY ($2) ORDER BY sha256 FOR KEY SHARE",
            job_id,
            &digests
        )
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|row| (row.sha256, row.size_bytes))
        .collect();
        let mut total: u64 = 0;
        for (index, digest) in digests.iter().enumerate() {
            match sizes.get(digest) {
                Some(size) => total += *size as u64,
                None => {
                    return Err(Error::validation(
                        format!("state.stored.chunks[{index}]"),
                        format!(
                            "chunk {} is not in the state store: upload it first (PUT /v1/jobs/{{job}}/state/chunks/{{sha256}})",
                            stored.chunks[index]
                        ),
                    ))
                }
            }
        }
        if total != stored.size_bytes {
            return Err(Error::validation(
                "state.stored.size_bytes",
                format!(
                    "the chunks add up to {total} bytes, not {}",
                    stored.size_bytes
                ),
            ));
        }
        sqlx::query!(
            "INSERT INTO state_refs (job_id, checkpoint_id, task_id, sha256)
             SELECT DISTINCT $1, $2::bigint, $3, d FROM unnest($4::bytea[]) AS d",
            job_id,
            checkpoint_id,
            task_id,
            &digests
        )
        .execute(&mut *conn)
        .await?;
    }

    // The shared objects of `state.objects` (the single `state.external`
    // reference stays the task's own business, as before).
    let objects: Vec<(String, String)> = state
        .objects
        .iter()
        .enumerate()
        .map(|(index, object)| (format!("state.objects[{index}].uri"), object.uri.clone()))
        .collect();
    if objects.is_empty() {
        return Ok(());
    }
    too_many("state.objects", objects.len())?;
    let uris: Vec<String> = objects.iter().map(|(_, uri)| uri.clone()).collect();
    sqlx::query!(
        "INSERT INTO external_objects (job_id, uri)
         SELECT $1, u FROM unnest($2::text[]) AS u ORDER BY u ON CONFLICT DO NOTHING",
        job_id,
        &uris
    )
    .execute(&mut *conn)
    .await?;
    // Share-locked, so that a release (which locks them for update, then
    // looks for references) either went first and is seen here, or waits
    // for this ack and sees its references.
    let released_now: HashSet<String> = sqlx::query!(
        r#"SELECT uri, released_at IS NOT NULL AS "released!" FROM external_objects
           WHERE job_id = $1 AND uri = ANY ($2) ORDER BY uri FOR SHARE"#,
        job_id,
        &uris
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .filter(|row| row.released)
    .map(|row| row.uri)
    .collect();
    if let Some((field, uri)) = objects.iter().find(|(_, uri)| released_now.contains(uri)) {
        return Err(Error::validation(
            field.clone(),
            format!("object {uri:?} was released for deletion; a state cannot use it again"),
        ));
    }
    sqlx::query!(
        "INSERT INTO external_refs (job_id, checkpoint_id, task_id, uri)
         SELECT DISTINCT $1, $2::bigint, $3, u FROM unnest($4::text[]) AS u",
        job_id,
        checkpoint_id,
        task_id,
        &uris
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// `GET /state/objects/unreferenced`: external objects no retained ack or
/// savepoint references, not yet released.
pub async fn unreferenced_objects(conn: &mut PgConnection, job_id: &str) -> Result<Vec<String>> {
    load_job(&mut *conn, job_id, JobLock::None).await?;
    Ok(sqlx::query_scalar!(
        "SELECT uri FROM external_objects o
         WHERE job_id = $1 AND released_at IS NULL
           AND NOT EXISTS (SELECT FROM external_refs r WHERE r.job_id = o.job_id AND r.uri = o.uri)
         ORDER BY uri LIMIT 10000",
        job_id
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// `POST /state/objects/released`: the owner deletes these objects; none
/// may be referenced now, and none can be afterwards. All or nothing: a
/// referenced or unknown one is refused, naming it.
pub async fn release_objects(conn: &mut PgConnection, job_id: &str, uris: &[String]) -> Result<()> {
    too_many("uris", uris.len())?;
    for (index, uri) in uris.iter().enumerate() {
        // The acks' limit (the registry holds nothing longer).
        super::require_name(&format!("uris[{index}]"), uri, 4096)?;
    }
    load_job(&mut *conn, job_id, JobLock::None).await?;
    // Locked first, then the references are read in a statement of their
    // own: it sees every ack that held the objects before this lock.
    let known: HashSet<String> = sqlx::query_scalar!(
        "SELECT uri FROM external_objects WHERE job_id = $1 AND uri = ANY ($2) ORDER BY uri FOR UPDATE",
        job_id,
        uris
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    if let Some((index, uri)) = uris
        .iter()
        .enumerate()
        .find(|(_, uri)| !known.contains(*uri))
    {
        return Err(Error::validation(
            format!("uris[{index}]"),
            format!("no state of job {job_id:?} ever referenced {uri:?}"),
        ));
    }
    let referenced: Option<String> = sqlx::query_scalar!(
        "SELECT uri FROM external_refs WHERE job_id = $1 AND uri = ANY ($2) ORDER BY uri LIMIT 1",
        job_id,
        uris
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(uri) = referenced {
        return Err(Error::conflict(format!(
            "object {uri:?} is still referenced by a retained checkpoint or savepoint; nothing was released"
        )));
    }
    sqlx::query!(
        "UPDATE external_objects SET released_at = coalesce(released_at, now())
         WHERE job_id = $1 AND uri = ANY ($2)",
        job_id,
        uris
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes the chunks that no ack references and that no task touched for
/// `grace`. Answers how many went. Run by the scheduler.
pub async fn collect_chunks(pool: &PgPool, grace: Duration) -> Result<u64> {
    // Locked and skipped when an ack holds them; an ack that referenced one
    // after this statement's snapshot makes the delete fail on the foreign
    // key (and the next run skip it), never lose it.
    let deleted = sqlx::query!(
        "DELETE FROM state_chunks WHERE (job_id, sha256) IN (
             SELECT job_id, sha256 FROM state_chunks c
             WHERE last_used_at < now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT FROM state_refs r WHERE r.job_id = c.job_id AND r.sha256 = c.sha256)
             LIMIT 10000 FOR UPDATE SKIP LOCKED)",
        grace.as_secs_f64()
    )
    .execute(pool)
    .await?
    .rows_affected();
    if deleted > 0 {
        tracing::info!(chunks = deleted, "collected unreferenced state chunks");
    }
    Ok(deleted)
}
