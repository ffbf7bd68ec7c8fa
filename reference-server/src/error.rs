//! The server's one API error type, rendered as the Matrix error JSON (`errcode`, `error`,
//! and the extra fields some codes carry). Internal errors are logged in full and shown to the
//! client only as `M_UNKNOWN`.

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub errcode: &'static str,
    pub message: String,
    /// Extra fields: `retry_after_ms`, `soft_logout`, `room_version`...
    pub extra: Option<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

macro_rules! codes {
    ($($fn_name:ident => $status:literal $code:literal,)*) => {
        impl ApiError {
            $(
                pub fn $fn_name(message: impl Into<String>) -> ApiError {
                    ApiError { status: $status, errcode: $code, message: message.into(), extra: None }
                }
            )*
        }
    };
}

codes! {
    forbidden => 403 "M_FORBIDDEN",
    not_found => 404 "M_NOT_FOUND",
    unrecognized => 404 "M_UNRECOGNIZED",
    method_not_allowed => 405 "M_UNRECOGNIZED",
    missing_token => 401 "M_MISSING_TOKEN",
    not_json => 400 "M_NOT_JSON",
    bad_json => 400 "M_BAD_JSON",
    missing_param => 400 "M_MISSING_PARAM",
    invalid_param => 400 "M_INVALID_PARAM",
    too_large => 413 "M_TOO_LARGE",
    user_in_use => 400 "M_USER_IN_USE",
    invalid_username => 400 "M_INVALID_USERNAME",
    room_in_use => 400 "M_ROOM_IN_USE",
    unsupported_room_version => 400 "M_UNSUPPORTED_ROOM_VERSION",
    bad_state => 400 "M_BAD_STATE",
    unknown => 500 "M_UNKNOWN",
    unknown_400 => 400 "M_UNKNOWN",
    exclusive => 400 "M_EXCLUSIVE",
    bad_alias => 400 "M_BAD_ALIAS",
    not_yet_uploaded => 504 "M_NOT_YET_UPLOADED",
    user_deactivated => 403 "M_USER_DEACTIVATED",
    invalid_room_state => 400 "M_INVALID_ROOM_STATE",
    cannot_leave_server_notice_room => 403 "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM",
    threepid_not_found => 400 "M_THREEPID_NOT_FOUND",
    weak_password => 400 "M_WEAK_PASSWORD",
    url_not_set => 400 "M_URL_NOT_SET",
    bad_status => 502 "M_BAD_STATUS",
    connection_failed => 502 "M_CONNECTION_FAILED",
    connection_timeout => 504 "M_CONNECTION_TIMEOUT",
    threepid_in_use => 400 "M_THREEPID_IN_USE",
    threepid_auth_failed => 400 "M_THREEPID_AUTH_FAILED",
    threepid_medium_not_supported => 400 "M_THREEPID_MEDIUM_NOT_SUPPORTED",
    invalid_email => 400 "M_INVALID_PARAM",
    user_suspended => 403 "M_USER_SUSPENDED",
    key_too_large => 400 "M_KEY_TOO_LARGE",
    profile_too_large => 400 "M_PROFILE_TOO_LARGE",
    invalid_signature => 400 "M_INVALID_SIGNATURE",
    unauthorized => 401 "M_UNAUTHORIZED",
    incompatible_room_version => 400 "M_INCOMPATIBLE_ROOM_VERSION",
}

impl ApiError {
    /// 401 `M_USER_LOCKED`, with `soft_logout: true` (the session may resume once unlocked).
    pub fn user_locked(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 401,
            errcode: "M_USER_LOCKED",
            message: message.into(),
            extra: Some(serde_json::json!({"soft_logout": true})),
        }
    }

    /// 401 `M_UNKNOWN_TOKEN`, with `soft_logout: false` (the token is gone for good).
    pub fn unknown_token(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 401,
            errcode: "M_UNKNOWN_TOKEN",
            message: message.into(),
            extra: Some(json!({"soft_logout": false})),
        }
    }

    /// An internal failure: logged in full, shown as a generic `M_UNKNOWN`.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!("internal error: {detail}");
        ApiError::unknown("internal server error")
    }

    pub fn with_extra(mut self, extra: Value) -> ApiError {
        self.extra = Some(extra);
        self
    }

    pub fn body(&self) -> Value {
        let mut v = json!({"errcode": self.errcode, "error": self.message});
        if let (Some(Value::Object(extra)), Value::Object(map)) = (&self.extra, &mut v) {
            for (k, x) in extra {
                map.insert(k.clone(), x.clone());
            }
        }
        v
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> ApiError {
        ApiError::internal(format!("database: {e}"))
    }
}
