//! `/writes`: staging rows (the pre-commit), as JSON or streamed NDJSON.

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::Json;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde_json::value::RawValue;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::JobCaller;
use super::body::paced;
use super::extract::{is_json, is_ndjson, parse_json, read_body, ApiPath};
use super::problem::Problem;
use super::AppState;
use crate::auth::Caller;
use crate::coordinator::{self, writes::BatchKey};
use crate::error::{Error, Result};
use crate::model::{WriteParams, WriteRequest, WriteResult};
use crate::sink::staging::Rows;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(write_batch))
}

type BodyStream = BoxStream<'static, Result<Bytes, Error>>;

/// Most rows in one JSON batch. Each row costs a reference besides its text
/// while the batch is parsed, so a body of tiny rows would multiply its size
/// in memory; NDJSON batches are streamed and have no such limit.
pub const MAX_JSON_ROWS: usize = 100_000;

/// Stage a batch of rows (pre-commit).
///
/// The rows become visible in the sink when a checkpoint that this task acks
/// after this write is committed. Each row is checked against the sink's
/// columns; a row that does not fit rejects the whole batch (422 naming the
/// row and column) and nothing is staged. The same `batch_id` from the same
/// task in one epoch is staged once: a retry, however late, gets the first
/// answer with `duplicate: true`; the same id with different rows is 409
/// `batch-conflict`.
///
/// In the keyed modes (upsert, first_write_wins) every row must carry every
/// key column, not null. A column
/// a row omits gets the column's default at promotion (or, in an upsert
/// output with `partial_updates`, keeps the sink's value); a column sent as
/// `null` is stored as NULL. In an upsert output, a row
/// `{"_sinkgate_op": "delete", <key columns>}` deletes its key; the last
/// operation on a key wins, and deleting a missing key is not an error.
///
/// A job with several outputs takes each batch for one of them, named in
/// `output`.
///
/// Send `application/json` (`{task_id, epoch, batch_id, rows}`) or
/// `application/x-ndjson` (one row object per line, with `task_id`, `epoch`,
/// `batch_id` as query parameters); NDJSON is streamed into PostgreSQL and
/// may be far larger than the JSON body limit.
#[utoipa::path(
    post, path = "/v1/jobs/{job}/writes", tag = "writes",
    params(
        ("job" = String, Path, description = "Job id"),
        ("task_id" = Option<String>, Query, description = "NDJSON only: the writing task"),
        ("epoch" = Option<i64>, Query, description = "NDJSON only: the task's epoch"),
        ("batch_id" = Option<String>, Query, description = "NDJSON only: the retry key"),
        ("output" = Option<String>, Query, description = "NDJSON only: the output the rows go to (may be left out when the job has one)"),
    ),
    request_body(content(
        (WriteRequest = "application/json", examples(
            ("rows" = (value = json!({"task_id": "task-0", "epoch": 3, "batch_id": "task-0-3-17",
                                      "rows": [{"word": "hello", "n": 2}]}))),
            ("deletes and an output" = (summary = "An upsert output's rows, one a delete by key, for a job with several outputs",
                value = json!({"task_id": "task-0", "epoch": 3, "batch_id": "task-0:customers:17", "output": "customers",
                               "rows": [{"customer_id": 7, "email": "ann@example.com"},
                                        {"_sinkgate_op": "delete", "customer_id": 9}]}))),
        )),
        (String = "application/x-ndjson", example = "{\"word\": \"hello\", \"n\": 2}\n{\"_sinkgate_op\": \"delete\", \"word\": \"world\"}\n"),
    )),
    responses(
        (status = 201, description = "Staged", body = WriteResult),
        (status = 200, description = "This batch was staged before; nothing staged again", body = WriteResult),
        (status = 404, description = "No such job (`not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "An NDJSON body stopped arriving for longer than the idle limit, or arrived slower than the minimum rate (`body-timeout`); nothing was staged", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The epoch is fenced (`fenced`): this instance is a zombie; or this batch id was staged before with different rows (`batch-conflict`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither JSON nor NDJSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A row does not fit the sink (`row-rejected`), an unknown task (`unknown-task`), or a bad field (`validation`; also more than 100000 rows in one JSON batch)", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "urn:sinkgate:problem:row-rejected", "title": "Row rejected", "status": 422,
                             "detail": "row 3: column \"n\": expected an integer for bigint, got \"many\"", "row": 3, "column": "n"})),
    )
)]
async fn write_batch(
    caller: JobCaller,
    State(state): State<AppState>,
    ApiPath(job_id): ApiPath<String>,
    request: Request,
) -> Result<(StatusCode, Json<WriteResult>)> {
    let JobCaller(caller) = caller;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let result = if is_ndjson(content_type.as_deref()) {
        let Query(params) = Query::<WriteParams>::try_from_uri(request.uri())
            .map_err(|rejection| Error::validation("query", rejection.body_text()))?;
        let body = request
            .into_body()
            .into_data_stream()
            .map_err(|error| Error::Malformed(format!("reading the body failed: {error}")));
        let mut body: BodyStream = paced(body, state.pace()).boxed();
        // No transaction (and no connection) before the body starts to
        // arrive: a client that connects and sends nothing holds nothing.
        let first = body.next().await;
        let body: BodyStream = futures::stream::iter(first).chain(body).boxed();
        let rows = Rows::Ndjson {
            body,
            max_bytes: state.limits.max_ndjson_body_bytes,
        };
        let key = BatchKey {
            task_id: &params.task_id,
            epoch: params.epoch,
            batch_id: &params.batch_id,
            output: params.output.as_deref(),
        };
        stage(&state, &job_id, key, rows, &caller).await?
    } else if is_json(content_type.as_deref()) {
        let body = read_body(request, &()).await?;
        let write: RawWriteRequest<'_> = parse_json(&body)?;
        let key = BatchKey {
            task_id: &write.task_id,
            epoch: write.epoch,
            batch_id: &write.batch_id,
            output: write.output.as_deref(),
        };
        stage(&state, &job_id, key, Rows::Json(write.rows), &caller).await?
    } else {
        return Err(Error::UnsupportedMediaType(
            "expected Content-Type: application/json or application/x-ndjson".into(),
        ));
    };
    let status = if result.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(result)))
}

/// [`WriteRequest`] as the handler reads it: rows stay JSON text, borrowed
/// from the body, and are checked and converted one by one while staging.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWriteRequest<'a> {
    task_id: String,
    epoch: i64,
    batch_id: String,
    #[serde(default)]
    output: Option<String>,
    #[serde(borrow, deserialize_with = "at_most_max_json_rows")]
    rows: Vec<&'a RawValue>,
}

/// Reads `rows` and stops at the row past [`MAX_JSON_ROWS`], before the
/// references of a body of tiny rows can outgrow the body itself.
fn at_most_max_json_rows<'de, D>(
    deserializer: D,
) -> std::result::Result<Vec<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Capped;
    impl<'de> serde::de::Visitor<'de> for Capped {
        type Value = Vec<&'de RawValue>;
        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(formatter, "an array of at most {MAX_JSON_ROWS} row objects")
        }
        fn visit_seq<A>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error>
        where
            A: serde::de::SeqAccess<'de>,
        {
            let mut rows = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_JSON_ROWS));
            while let Some(row) = seq.next_element()? {
                if rows.len() == MAX_JSON_ROWS {
                    return Err(serde::de::Error::custom(format_args!(
                        "more than {MAX_JSON_ROWS} rows in one JSON batch: send larger batches as NDJSON (streamed)"
                    )));
                }
                rows.push(row);
            }
            Ok(rows)
        }
    }
    deserializer.deserialize_seq(Capped)
}

async fn stage(
    state: &AppState,
    job_id: &str,
    key: BatchKey<'_>,
    rows: Rows<'_, BodyStream>,
    caller: &Caller,
) -> Result<WriteResult> {
    let _slot = state.write_slots.acquire(job_id).await?;
    // An upload may outlive its token: a revocation stops it.
    let token_id = match caller {
        Caller::Processor { token_id, .. } => Some(token_id.as_str()),
        _ => None,
    };
    coordinator::write(&state.db, job_id, key, rows, token_id).await
}
