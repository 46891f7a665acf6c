//! RFC 9457 problem documents: the one place where protocol errors become
//! HTTP statuses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::Error;

/// Prefix of every problem `type`; the suffix is [`Error::kind`].
pub const PROBLEM_TYPE_PREFIX: &str = "urn:sinkgate:problem:";

pub use crate::model::Problem;

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
        Error::Internal(_) => base(error, S::INTERNAL_SERVER_ERROR, "Internal error"),
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(cause) = &self {
            tracing::error!(error = ?cause, "internal error");
        }
        let problem = problem_for(&self);
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
