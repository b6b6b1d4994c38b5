//! What went wrong with an EC2 or EBS call, sorted into the kinds a caller acts on: wait and
//! retry (throttled, no capacity, unreachable, a server fault), fix the credentials, or fix the
//! request. Classified once here from the SDK's error variants and the service's error code,
//! never by matching message text.

use std::error::Error as StdError;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// How a caller should treat an [`Ec2Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ec2ErrorKind {
    /// The service asked us to slow down (`RequestLimitExceeded`, `Throttling`, HTTP 503/429).
    Throttled,
    /// No capacity for the request now (`InsufficientInstanceCapacity` and its kin).
    Capacity,
    /// The credentials were refused or lack a permission (`AuthFailure`,
    /// `UnauthorizedOperation`, `InvalidClientTokenId`, `SignatureDoesNotMatch`, HTTP 401/403).
    Auth,
    /// No answer: the connection failed or timed out.
    Unreachable,
    /// The request was refused as wrong (any other 4xx, e.g. `InvalidAMIID.NotFound`), or was
    /// refused here before it was sent.
    Invalid,
    /// The service failed (any other 5xx, e.g. `InternalError`).
    Server,
    /// A local file could not be read or written.
    Io,
    /// Anything else (an answer that could not be parsed, a resource in an unexpected state).
    Other,
}

/// An EC2 or EBS call that failed: its kind, the service's error code (or one of ours for
/// failures without one: `DispatchFailure`, `TimeoutError`, `InvalidInput`, ...), its message,
/// and the operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message} ({operation})")]
pub struct Ec2Error {
    pub kind: Ec2ErrorKind,
    pub code: String,
    pub message: String,
    pub operation: &'static str,
    #[source]
    source: Option<std::io::Error>,
}

impl Ec2Error {
    /// Whether the same call may succeed later unchanged.
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            Ec2ErrorKind::Throttled | Ec2ErrorKind::Capacity | Ec2ErrorKind::Unreachable | Ec2ErrorKind::Server
        )
    }

    pub(crate) fn new(kind: Ec2ErrorKind, code: &str, message: impl Into<String>, operation: &'static str) -> Self {
        Self { kind, code: code.to_owned(), message: message.into(), operation, source: None }
    }

    /// A request refused here, before it was sent.
    pub(crate) fn invalid(operation: &'static str, message: impl Into<String>) -> Self {
        Self::new(Ec2ErrorKind::Invalid, "InvalidInput", message, operation)
    }

    /// An answer that does not hold what it should.
    pub(crate) fn unexpected(operation: &'static str, message: impl Into<String>) -> Self {
        Self::new(Ec2ErrorKind::Other, "UnexpectedResponse", message, operation)
    }

    /// A local file that could not be read or written (`doing` says which and how).
    pub(crate) fn io(operation: &'static str, doing: String, source: std::io::Error) -> Self {
        Self { source: Some(source), ..Self::new(Ec2ErrorKind::Io, "Io", doing, operation) }
    }

    /// An SDK error, by variant, HTTP status and error code.
    pub(crate) fn from_sdk<E>(operation: &'static str, error: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + StdError + 'static,
    {
        let (kind, code) = match &error {
            SdkError::DispatchFailure(_) => (Ec2ErrorKind::Unreachable, "DispatchFailure".to_owned()),
            SdkError::TimeoutError(_) => (Ec2ErrorKind::Unreachable, "TimeoutError".to_owned()),
            SdkError::ConstructionFailure(_) => (Ec2ErrorKind::Invalid, "ConstructionFailure".to_owned()),
            _ => {
                let status = error.raw_response().map(|response| response.status().as_u16());
                let code = error.code().map(str::to_owned);
                let kind = kind_of(code.as_deref(), status);
                let code = code.unwrap_or_else(|| status.map_or("ResponseError".to_owned(), |s| format!("HTTP{s}")));
                (kind, code)
            }
        };
        let message = match error.message() {
            Some(message) if !message.is_empty() => message.to_owned(),
            _ => DisplayErrorContext(&error).to_string(),
        };
        Self::new(kind, &code, message, operation)
    }
}

/// Codes that mean "slow down", across EC2 (query protocol) and EBS (REST/JSON).
const THROTTLED: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ConcurrentLimitExceededException",
    "ServiceUnavailable",
    "Unavailable",
];

/// Codes that mean the credentials, not the request, are at fault.
const AUTH: &[&str] = &[
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "UnrecognizedClientException",
    "ExpiredToken",
    "RequestExpired",
    "AccessDenied",
    "AccessDeniedException",
];

/// The kind of a service's answer: by its error code first, then by its HTTP status.
fn kind_of(code: Option<&str>, status: Option<u16>) -> Ec2ErrorKind {
    match (code, status) {
        (Some(code), _) if THROTTLED.contains(&code) => Ec2ErrorKind::Throttled,
        (Some(code), _) if AUTH.contains(&code) => Ec2ErrorKind::Auth,
        // InsufficientInstanceCapacity, InsufficientHostCapacity, InsufficientFreeAddressesInSubnet...
        (Some(code), _) if code.starts_with("Insufficient") => Ec2ErrorKind::Capacity,
        (_, Some(429 | 503)) => Ec2ErrorKind::Throttled,
        (_, Some(401 | 403)) => Ec2ErrorKind::Auth,
        (_, Some(400..=499)) => Ec2ErrorKind::Invalid,
        (_, Some(500..=599)) => Ec2ErrorKind::Server,
        _ => Ec2ErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ec2ErrorKind::*;

    #[test]
    fn codes_decide_before_statuses() {
        let cases = [
            (Some("RequestLimitExceeded"), Some(503), Throttled),
            (Some("RequestLimitExceeded"), Some(400), Throttled),
            (Some("ThrottlingException"), Some(400), Throttled),
            (None, Some(503), Throttled),
            (None, Some(429), Throttled),
            (Some("InsufficientInstanceCapacity"), Some(500), Capacity),
            (Some("InsufficientHostCapacity"), Some(500), Capacity),
            (Some("AuthFailure"), Some(401), Auth),
            (Some("UnauthorizedOperation"), Some(403), Auth),
            (Some("InvalidClientTokenId"), Some(403), Auth),
            (Some("SignatureDoesNotMatch"), Some(403), Auth),
            (Some("AccessDeniedException"), Some(403), Auth),
            (None, Some(403), Auth),
            (Some("InvalidAMIID.NotFound"), Some(400), Invalid),
            (Some("InvalidParameterValue"), Some(400), Invalid),
            (Some("InternalError"), Some(500), Server),
            (None, Some(502), Server),
            (Some("Weird"), None, Other),
            (None, None, Other),
        ];
        for (code, status, kind) in cases {
            assert_eq!(kind_of(code, status), kind, "{code:?} {status:?}");
        }
    }

    #[test]
    fn only_transient_kinds_are_retryable() {
        let retryable = |kind| Ec2Error::new(kind, "X", "m", "RunInstances").retryable();
        assert!([Throttled, Capacity, Unreachable, Server].into_iter().all(retryable));
        assert!(![Auth, Invalid, Io, Other].into_iter().any(retryable));
    }

    #[test]
    fn display_leads_with_the_code_and_names_the_operation() {
        let error = Ec2Error::new(
            Auth,
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
            "RunInstances",
        );
        assert_eq!(
            error.to_string(),
            "AuthFailure: AWS was not able to validate the provided access credentials (RunInstances)"
        );
        let io = Ec2Error::io("UploadImage", "reading /x.raw".to_owned(), std::io::Error::other("gone"));
        assert_eq!(io.to_string(), "Io: reading /x.raw (UploadImage)");
        assert_eq!(io.source().map(ToString::to_string).as_deref(), Some("gone"));
    }
}
