//! RFC 9457 problem documents: the one place where protocol errors become
//! HTTP statuses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::Error;

pub use crate::model::{Problem, ProblemKind, PROBLEM_TYPE_PREFIX};

tokio::task_local! {
    /// The id of the request being answered (`x-request-id`), set by the
    /// middleware for everything that runs on its behalf: every problem
    /// document rendered meanwhile carries it as `request_id`.
    pub static REQUEST_ID: Option<String>;
}

/// The fields every problem has; [`problem_for`] adds the kind's own.
fn base(error: &Error, status: StatusCode, title: &str) -> Problem {
    Problem {
        problem_type: format!("{PROBLEM_TYPE_PREFIX}{}", error.kind()),
        title: title.to_owned(),
        status: status.as_u16(),
        detail: error.to_string(),
        field: None,
        row: None,
        column: None,
        current_epoch: None,
        checkpoint_id: None,
        sink_error: None,
        partition: None,
        committed_offset: None,
        retry_after_ms: None,
        request_id: None,
    }
}

/// Status and problem document for an error.
pub fn problem_for(error: &Error) -> Problem {
    use StatusCode as S;
    match error {
        Error::NotFound(_) => base(error, S::NOT_FOUND, "Not found"),
        Error::Fenced { current, .. } => Problem {
            current_epoch: Some(*current),
            ..base(error, S::CONFLICT, "Fenced epoch")
        },
        Error::FencedByFailover { .. } => base(error, S::CONFLICT, "Fenced epoch"),
        Error::CheckpointAborted { checkpoint_id, .. } => Problem {
            checkpoint_id: Some(*checkpoint_id),
            ..base(error, S::CONFLICT, "Checkpoint aborted")
        },
        Error::UnknownTask(_) => Problem {
            field: Some("task_id".into()),
            ..base(error, S::UNPROCESSABLE_ENTITY, "Unknown task")
        },
        Error::RowRejected { row, column, .. } => Problem {
            row: Some(*row),
            column: column.clone(),
            ..base(error, S::UNPROCESSABLE_ENTITY, "Row rejected")
        },
        Error::OffsetRegression {
            partition,
            committed,
            ..
        } => Problem {
            field: Some(format!("offsets.{partition}")),
            partition: Some(partition.clone()),
            committed_offset: Some(*committed),
            ..base(error, S::UNPROCESSABLE_ENTITY, "Offset regression")
        },
        Error::BatchConflict { .. } => Problem {
            field: Some("batch_id".into()),
            ..base(error, S::CONFLICT, "Batch id reused")
        },
        Error::PromotionBlocked {
            checkpoint_id,
            error: sink_error,
        } => Problem {
            checkpoint_id: Some(*checkpoint_id),
            sink_error: Some(sink_error.clone()),
            retry_after_ms: Some(5000),
            ..base(error, S::CONFLICT, "Promotion blocked")
        },
        Error::BodyTimeout(_) => base(error, S::REQUEST_TIMEOUT, "Body timeout"),
        Error::Unauthenticated(_) => base(error, S::UNAUTHORIZED, "Unauthenticated"),
        Error::Forbidden(_) => base(error, S::FORBIDDEN, "Forbidden"),
        Error::Conflict(_) => base(error, S::CONFLICT, "Conflict"),
        Error::Validation { field, .. } => Problem {
            field: Some(field.clone()),
            ..base(error, S::UNPROCESSABLE_ENTITY, "Invalid request")
        },
        Error::Malformed(_) => base(error, S::BAD_REQUEST, "Malformed request"),
        Error::UnsupportedMediaType(_) => {
            base(error, S::UNSUPPORTED_MEDIA_TYPE, "Unsupported media type")
        }
        Error::TooEarly { retry_after_ms, .. } => Problem {
            retry_after_ms: Some(*retry_after_ms),
            ..base(error, S::TOO_MANY_REQUESTS, "Too early")
        },
        Error::PayloadTooLarge(_) => base(error, S::PAYLOAD_TOO_LARGE, "Payload too large"),
        Error::Overloaded => Problem {
            retry_after_ms: Some(1000),
            ..base(error, S::SERVICE_UNAVAILABLE, "Overloaded")
        },
        Error::Timeout(_) => Problem {
            retry_after_ms: Some(1000),
            ..base(error, S::SERVICE_UNAVAILABLE, "Timeout")
        },
        Error::Unavailable => Problem {
            retry_after_ms: Some(1000),
            ..base(error, S::SERVICE_UNAVAILABLE, "Service unavailable")
        },
        Error::StateCorrupted(_) => base(error, S::INTERNAL_SERVER_ERROR, "State corrupted"),
        Error::Item { item, error: inner } => {
            let problem = problem_for(inner);
            Problem {
                detail: error.to_string(),
                field: Some(match problem.field {
                    Some(field) => format!("{item}.{field}"),
                    None => item.clone(),
                }),
                ..problem
            }
        }
        Error::Internal(_) => base(error, S::INTERNAL_SERVER_ERROR, "Internal error"),
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(cause) = &self {
            tracing::error!(error = ?cause, "internal error");
        }
        let mut problem = problem_for(&self);
        problem.request_id = REQUEST_ID.try_with(Clone::clone).ok().flatten();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = problem.retry_after_ms;
        let mut response = (status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(ms) = retry_after {
            let seconds = ms.div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                headers.insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// A representative error of each problem kind, for the OpenAPI examples.
fn sample(kind: ProblemKind) -> Error {
    match kind {
        ProblemKind::NotFound => Error::not_found("job \"word-count\" does not exist"),
        ProblemKind::Fenced => Error::Fenced {
            sent: 2,
            current: 3,
        },
        ProblemKind::CheckpointAborted => Error::CheckpointAborted {
            checkpoint_id: 41,
            reason: "timeout".into(),
        },
        ProblemKind::UnknownTask => Error::UnknownTask("task-9".into()),
        ProblemKind::RowRejected => Error::RowRejected {
            row: 3,
            column: Some("n".into()),
            detail: "column \"n\" (bigint): \"three\" is not an integer".into(),
        },
        ProblemKind::OffsetRegression => Error::OffsetRegression {
            partition: "0".into(),
            offset: 4900,
            committed: 5000,
        },
        ProblemKind::BatchConflict => Error::BatchConflict {
            batch_id: "task-0:p0:4900".into(),
        },
        ProblemKind::PromotionBlocked => Error::PromotionBlocked {
            checkpoint_id: 41,
            error: "duplicate key value violates unique constraint \"events_pkey\"".into(),
        },
        ProblemKind::BodyTimeout => Error::BodyTimeout("no body bytes arrived for 30000 ms".into()),
        ProblemKind::Conflict => {
            Error::conflict("checkpoint 41 is committed; a decided checkpoint cannot be aborted")
        }
        ProblemKind::Validation => Error::validation("epoch", "epoch must be at least 1"),
        ProblemKind::Malformed => {
            Error::Malformed("the body is not JSON: expected value at line 1 column 1".into())
        }
        ProblemKind::UnsupportedMediaType => {
            Error::UnsupportedMediaType("send Content-Type: application/json".into())
        }
        ProblemKind::TooEarly => Error::TooEarly {
            detail: "min_pause_ms has not passed since the last decision".into(),
            retry_after_ms: 250,
        },
        ProblemKind::PayloadTooLarge => {
            Error::PayloadTooLarge("the body exceeds 1048576 bytes".into())
        }
        ProblemKind::Unauthenticated => Error::Unauthenticated("a bearer token is required".into()),
        ProblemKind::Forbidden => {
            Error::Forbidden("this token belongs to job \"word-count\"".into())
        }
        ProblemKind::StateCorrupted => Error::StateCorrupted(
            "state chunk 9f86d081… of job \"word-count\" is corrupted in the database".into(),
        ),
        ProblemKind::Overloaded => Error::Overloaded,
        ProblemKind::Timeout => Error::Timeout(30_000),
        ProblemKind::Unavailable => Error::Unavailable,
        ProblemKind::Internal => Error::Internal(anyhow::anyhow!("an unexpected failure")),
    }
}

/// The error a response documents: the first problem kind its description
/// names in backticks, else the usual kind for its status.
fn documented_error(status: &str, description: &str) -> Option<Error> {
    let named = description
        .split('`')
        .skip(1)
        .step_by(2)
        .find_map(ProblemKind::parse);
    let kind = named.or(match status {
        "400" => Some(ProblemKind::Malformed),
        "401" => Some(ProblemKind::Unauthenticated),
        "403" => Some(ProblemKind::Forbidden),
        "404" => Some(ProblemKind::NotFound),
        "408" => Some(ProblemKind::BodyTimeout),
        "409" => Some(ProblemKind::Conflict),
        "413" => Some(ProblemKind::PayloadTooLarge),
        "415" => Some(ProblemKind::UnsupportedMediaType),
        "422" => Some(ProblemKind::Validation),
        "429" => Some(ProblemKind::TooEarly),
        "503" => Some(ProblemKind::Unavailable),
        _ => None,
    })?;
    Some(sample(kind))
}

/// Gives every problem response of the OpenAPI document that has no example
/// one, made by the same mapping as real answers ([`problem_for`]), so an
/// example cannot drift from what the service sends.
pub struct ProblemExamples;

impl utoipa::Modify for ProblemExamples {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        for (_, operation) in super::operations_mut(openapi) {
            for (status, response) in operation.responses.responses.iter_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                let Some(content) = response.content.get_mut("application/problem+json") else {
                    continue;
                };
                if content.example.is_some() || !content.examples.is_empty() {
                    continue;
                }
                let Some(error) = documented_error(status, &response.description) else {
                    continue;
                };
                let mut example =
                    serde_json::to_value(problem_for(&error)).expect("problems serialize");
                example["request_id"] = "0b5e7f0c-64a4-4f57-9d0e-2f1f8c0b9a11".into();
                content.example = Some(example);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind has a sample of its own kind, and the OpenAPI description
    /// of `type` names it.
    #[test]
    fn every_problem_kind_is_sampled_and_documented() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(Problem::schema()).unwrap();
        let documented = schema["properties"]["type"]["description"]
            .as_str()
            .expect("`type` is described")
            .to_owned();
        for &kind in ProblemKind::ALL {
            assert_eq!(sample(kind).kind(), kind);
            assert!(
                documented.contains(&format!("`{kind}`")),
                "the description of `type` does not name `{kind}`"
            );
        }
    }
}
