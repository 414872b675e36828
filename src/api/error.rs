//! The API's error type: an honest status code and a JSON body
//! `{"error": {"code": "...", "message": "..."}}`. Never a 200 with an
//! error inside. Internal details are logged, not sent.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::auth::tokens::Invalid;
use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (seconds), for answers that mean "later".
    pub retry_after: Option<u32>,
}

/// The error body, as documented in the OpenAPI document.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `validation_failed`.
    #[schema(example = "validation_failed")]
    pub code: String,
    /// Human-readable explanation.
    #[schema(example = "streams[0].name: invalid regular expression")]
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 503 `busy`: a bounded resource is in use; try again after `seconds`.
    pub fn busy(message: impl Into<String>, seconds: u32) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }

    /// Map a store error; `what` names the resource for 404s.
    pub fn from_store(e: StoreError, what: &str) -> Self {
        match e {
            StoreError::NotFound => Self::not_found(what),
            StoreError::Conflict(m) => Self::conflict(m),
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "database unavailable");
                Self::unavailable(
                    "database_unavailable",
                    "the database is unavailable; try again",
                )
            }
            other => {
                tracing::error!(error = %other, "database error");
                Self::internal()
            }
        }
    }
}

/// The failure of a write that validates inside its transaction
/// ([`crate::store::audit::audited`]): refused with an answer for the
/// caller, or failed in the store. Either way nothing was written.
pub(super) enum WriteError {
    Refused(ApiError),
    Store(StoreError),
}

impl WriteError {
    /// The answer, naming `what` for a store error.
    pub(super) fn into_api(self, what: &str) -> ApiError {
        match self {
            WriteError::Refused(e) => e,
            WriteError::Store(e) => ApiError::from_store(e, what),
        }
    }
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError::Store(e)
    }
}

impl From<diesel::result::Error> for WriteError {
    fn from(e: diesel::result::Error) -> Self {
        WriteError::Store(e.into())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::from_store(e, "resource")
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        Self::unprocessable(e.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(s) = self.retry_after {
            response.insert_header((actix_web::http::header::RETRY_AFTER, s.to_string()));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
            },
        })
    }
}

/// Map actix's JSON extractor errors: 413 for oversized bodies, 415 for a
/// wrong content type, 400 for everything malformed (bad syntax, wrong
/// types, unknown fields).
pub fn json_error(
    err: actix_web::error::JsonPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    let api = match &err {
        E::Overflow { limit } | E::OverflowKnownLength { limit, .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {limit} bytes"),
        ),
        E::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request body must be application/json",
        ),
        E::Deserialize(e) => ApiError::bad_request(format!(
            "malformed JSON body: {}",
            without_strings(&e.to_string())
        )),
        other => ApiError::bad_request(format!("cannot read the request body: {other}")),
    };
    api.into()
}

/// serde's message with every string value it quotes (`invalid type:
/// string "rtmp://h/live/KEY", expected …`) replaced by `a string`: a body
/// may carry a secret in the wrong place, and answers never repeat one.
fn without_strings(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("string \"") {
        out.push_str(&rest[..i]);
        out.push_str("a string");
        // The value is Debug-quoted: it ends at the first `"` not escaped.
        let body = &rest[i + "string \"".len()..];
        let mut escaped = false;
        let end = body.char_indices().find_map(|(j, c)| match c {
            _ if escaped => {
                escaped = false;
                None
            }
            '\\' => {
                escaped = true;
                None
            }
            '"' => Some(j + 1),
            _ => None,
        });
        rest = &body[end.unwrap_or(body.len())..];
    }
    out.push_str(rest);
    out
}

pub fn query_error(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::bad_request(format!(
        "malformed query string: {}",
        without_strings(&err.to_string())
    ))
    .into()
}

pub fn path_error(
    err: actix_web::error::PathError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::bad_request(format!("malformed path parameter: {err}")).into()
}

#[cfg(test)]
mod tests {
    use super::without_strings;

    #[test]
    fn serde_messages_lose_their_string_values() {
        let e = serde_json::from_str::<Vec<String>>(r#""rtmp://h/live/KEY\"x""#).unwrap_err();
        let shown = without_strings(&e.to_string());
        assert!(!shown.contains("KEY"), "{shown}");
        assert!(
            shown.starts_with("invalid type: a string, expected a sequence"),
            "{shown}"
        );
        assert_eq!(
            without_strings(r#"a string "x\\" and string "y" end"#),
            "a a string and a string end"
        );
        assert_eq!(without_strings("no value"), "no value");
        assert_eq!(without_strings(r#"string "unterminated"#), "a string");
    }
}
