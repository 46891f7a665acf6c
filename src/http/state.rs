//! `/state` and `/savepoints`: the checkpoint's state (the built-in chunk
//! store, shared external objects) and the checkpoints operators keep.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{Admin, JobCaller};
use super::extract::{read_body, ApiJson, ApiPath};
use super::problem::Problem;
use super::AppState;
use crate::coordinator;
use crate::coordinator::state::MAX_CHUNK_BYTES;
use crate::error::Result;
use crate::model::{
    ChunkList, ObjectList, Savepoint, SavepointList, SavepointRequest, StoredChunk,
};

pub fn router() -> OpenApiRouter<AppState> {
    // A chunk's body has a limit of its own (the JSON limit may be lower).
    let chunks = OpenApiRouter::new()
        .routes(routes!(put_chunk, get_chunk))
        .layer(DefaultBodyLimit::max(MAX_CHUNK_BYTES));
    OpenApiRouter::new()
        .routes(routes!(missing_chunks))
        .merge(chunks)
        .routes(routes!(unreferenced_objects))
        .routes(routes!(release_objects))
        .routes(routes!(create_savepoint, list_savepoints))
        .routes(routes!(delete_savepoint))
}

/// Which of these state chunks the store lacks.
///
/// A task about to checkpoint cuts its state into chunks, asks which the
/// store lacks, uploads only those (`PUT …/state/chunks/{sha256}`), and acks
/// with `state.stored` listing every chunk in order: a state that changed
/// a little uploads a little. Chunks reported present count as in use, so
/// they are not collected before the ack that references them.
#[utoipa::path(
    post, path = "/v1/jobs/{job}/state/chunks/missing", tag = "state",
    params(("job" = String, Path, description = "Job id")),
    request_body = ChunkList,
    responses(
        (status = 200, description = "The chunks to upload, in the order asked (each once)", body = ChunkList),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An id that is not a lowercase hex SHA-256, or more than 100000 (`validation`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn missing_chunks(
    _: JobCaller,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
    ApiJson(request): ApiJson<ChunkList>,
) -> Result<Json<ChunkList>> {
    let missing = coordinator::missing_chunks(&state.db, &job_id, &request.chunks).await?;
    Ok(Json(ChunkList { chunks: missing }))
}

/// Upload a state chunk.
///
/// The body (`application/octet-stream`, at most 16 MiB) must hash to the
/// SHA-256 in the path; the store checks it, keeps one copy per job, and
/// checks it again on every download. Uploading a chunk the store holds
/// is harmless (200, `created: false`).
#[utoipa::path(
    put, path = "/v1/jobs/{job}/state/chunks/{sha256}", tag = "state",
    params(("job" = String, Path, description = "Job id"),
           ("sha256" = String, Path, description = "The chunk's SHA-256, lowercase hex")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The chunk's bytes"),
    responses(
        (status = 201, description = "Stored", body = StoredChunk),
        (status = 200, description = "The store held it already", body = StoredChunk),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than 16 MiB (`payload-too-large`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The body does not hash to the path's SHA-256, or the path is not one (`validation`, field `sha256`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn put_chunk(
    _: JobCaller,
    State(state): State<AppState>,
    ApiPath((job_id, sha256)): ApiPath<(String, String)>,
    request: Request,
) -> Result<(StatusCode, Json<StoredChunk>)> {
    let content = read_body(request, &()).await?;
    let stored = coordinator::put_chunk(&state.db, &job_id, &sha256, content).await?;
    let status = if stored.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(stored)))
}

/// Download a state chunk.
///
/// Its content is checked against its SHA-256 before it is sent: a chunk
/// corrupted in the database is refused (500 `state-corrupted`), never
/// served.
#[utoipa::path(
    get, path = "/v1/jobs/{job}/state/chunks/{sha256}", tag = "state",
    params(("job" = String, Path, description = "Job id"),
           ("sha256" = String, Path, description = "The chunk's SHA-256, lowercase hex")),
    responses(
        (status = 200, description = "The chunk's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No such job or chunk (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The path is not a SHA-256 (`validation`)", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The stored chunk does not match its SHA-256 (`state-corrupted`): restore from an older checkpoint or savepoint", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "urn:sinkgate:problem:state-corrupted", "title": "State corrupted", "status": 500,
                             "detail": "state chunk 9f86…0a08 of job \"word-count\" is corrupted in the database (its content hashes to 2c26…7ae); restore from an older checkpoint or savepoint"})),
    )
)]
async fn get_chunk(
    _: JobCaller,
    State(state): State<AppState>,
    ApiPath((job_id, sha256)): ApiPath<(String, String)>,
) -> Result<impl IntoResponse> {
    let content: Bytes = coordinator::chunk(&state.db, &job_id, &sha256).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        content,
    ))
}

/// External objects that may be released, then deleted.
///
/// Objects listed in acks (`state.objects`) that no retained checkpoint or
/// savepoint references any more, and that were not released yet. Release
/// them (`POST …/state/objects/released`) and delete them from your store
/// only once that answered 204: an ack may name an object again until it is
/// released.
#[utoipa::path(
    get, path = "/v1/jobs/{job}/state/objects/unreferenced", tag = "state",
    params(("job" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Unreferenced objects (at most 10000 per call)", body = ObjectList),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn unreferenced_objects(
    _: JobCaller,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Json<ObjectList>> {
    let uris = coordinator::unreferenced_objects(&state.db, &job_id).await?;
    Ok(Json(ObjectList { uris }))
}

/// Release external objects, before their owner deletes them.
///
/// All or nothing: each must be known and unreferenced. From then on an
/// ack that lists a released object is refused, so the deletion that
/// follows a 204 never races a new use. After a 409, delete nothing.
#[utoipa::path(
    post, path = "/v1/jobs/{job}/state/objects/released", tag = "state",
    params(("job" = String, Path, description = "Job id")),
    request_body = ObjectList,
    responses(
        (status = 204, description = "Released"),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An object is referenced again (`conflict`); nothing was released", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An object no ack ever listed (`validation`, naming `uris[i]`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn release_objects(
    _: JobCaller,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
    ApiJson(request): ApiJson<ObjectList>,
) -> Result<StatusCode> {
    coordinator::release_objects(&state.db, &job_id, &request.uris).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Take a savepoint (admin only).
///
/// Labels a decided checkpoint (by default the last one) and keeps it, with
/// its acks, state and offsets, until deleted, whatever `retained` says. A
/// job whose every output is upsert can restart from it (`POST /attempts`
/// with `from_checkpoint`).
#[utoipa::path(
    post, path = "/v1/jobs/{job}/savepoints", tag = "state",
    params(("job" = String, Path, description = "Job id")),
    request_body = SavepointRequest,
    responses(
        (status = 201, description = "Taken (or the same label for the same checkpoint again)", body = Savepoint),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The checkpoint has another savepoint, or the label names another checkpoint (`conflict`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No decided checkpoint yet, or one that is not decided or no longer retained, or a bad label (`validation`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_savepoint(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
    ApiJson(request): ApiJson<SavepointRequest>,
) -> Result<(StatusCode, Json<Savepoint>)> {
    let savepoint = coordinator::create_savepoint(&state.db, &job_id, &request).await?;
    Ok((StatusCode::CREATED, Json(savepoint)))
}

/// A job's savepoints, newest first.
#[utoipa::path(
    get, path = "/v1/jobs/{job}/savepoints", tag = "state",
    params(("job" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Savepoints", body = SavepointList),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_savepoints(
    _: JobCaller,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Json<SavepointList>> {
    let savepoints = coordinator::savepoints(&state.db, &job_id).await?;
    Ok(Json(SavepointList { savepoints }))
}

/// Delete a savepoint (admin only); its checkpoint is retained like any
/// other again.
#[utoipa::path(
    delete, path = "/v1/jobs/{job}/savepoints/{id}", tag = "state",
    params(("job" = String, Path, description = "Job id"), ("id" = i64, Path, description = "The savepoint's checkpoint id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such job or savepoint (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The id is not a number (`validation`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_savepoint(
    _: Admin,
    State(state): State<AppState>,
    ApiPath((job_id, checkpoint_id)): ApiPath<(String, i64)>,
) -> Result<StatusCode> {
    coordinator::delete_savepoint(&state.db, &job_id, checkpoint_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
