//! Extractors whose rejections are problem documents, so malformed input
//! never gets axum's plain-text answers.

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::Error;

/// A JSON body, parsed with the path of the offending field on error.
pub struct ApiJson<T>(pub T);

/// Parses JSON; syntax errors are 400 `malformed`, type and field errors are
/// 422 `validation` naming the field path (e.g. `sink.mode`).
pub fn parse_json<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, Error> {
    // serde_json's recursion limit (128 levels) refuses hostile nesting.
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            Error::Malformed(format!("invalid JSON: {inner}"))
        } else {
            Error::validation(
                if path == "." { "body".into() } else { path },
                inner.to_string(),
            )
        }
    })?;
    deserializer
        .end()
        .map_err(|error| Error::Malformed(format!("invalid JSON: {error}")))?;
    Ok(value)
}

/// Whether a content type is JSON (`application/json` or `…+json`).
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        })
        .unwrap_or(false)
}

/// Whether a content type is NDJSON (`application/x-ndjson`), the streamed
/// form of `/writes`.
pub fn is_ndjson(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/x-ndjson"))
}

/// Reads a body up to the router's body limit; too large is 413.
pub async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, Error> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            // The body stalled, trickled, or overran the memory budget.
            if let Some(error) = super::body::failure(&rejection) {
                return error;
            }
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge(
                    "the request body is larger than the configured limit".into(),
                )
            } else {
                Error::Malformed(rejection.body_text())
            }
        })
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok());
        if !is_json(content_type) {
            return Err(Error::UnsupportedMediaType(
                "expected Content-Type: application/json".into(),
            ));
        }
        let bytes = read_body(request, state).await?;
        Ok(ApiJson(parse_json(&bytes)?))
    }
}

/// Query parameters; bad ones are 422 `validation`.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|query| ApiQuery(query.0))
            .map_err(|rejection: QueryRejection| Error::validation("query", rejection.body_text()))
    }
}

/// Path parameters; unparseable ones (a non-numeric checkpoint id) are 422.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|path| ApiPath(path.0))
            .map_err(|rejection: PathRejection| Error::validation("path", rejection.body_text()))
    }
}
