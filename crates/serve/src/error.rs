//! The server's one error type: start-up failures and the failures of a request, each
//! with the HTTP status and gRPC code it is answered with.

/// What can go wrong starting the server or serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value out of range.
    #[error("{0}")]
    Config(String),
    /// A listening socket could not be opened.
    #[error("cannot listen for {protocol} on {addr}: {source}")]
    Bind { protocol: &'static str, addr: std::net::SocketAddr, source: std::io::Error },
    /// The model or a session could not be set up.
    #[error(transparent)]
    Model(#[from] repvgg_runtime::Error),
    /// The async runtime or a thread could not be started.
    #[error("cannot start {what}: {source}")]
    Start { what: &'static str, source: std::io::Error },
    /// A malformed or inconsistent request (HTTP 400, gRPC INVALID_ARGUMENT).
    #[error("{0}")]
    BadRequest(String),
    /// A request body over the configured maximum (HTTP 413, gRPC RESOURCE_EXHAUSTED).
    #[error("{0}")]
    TooLarge(String),
    /// An unknown model, version or path (HTTP 404, gRPC NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The queue is full, the request's deadline passed, or the server is shutting down
    /// (HTTP 503, gRPC UNAVAILABLE). The client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// The server-wide budget of request bytes in flight cannot hold this request now
    /// (HTTP 503, gRPC RESOURCE_EXHAUSTED). The client may retry.
    #[error("{0}")]
    Overloaded(String),
    /// The client stopped sending a request's body for the idle timeout (HTTP 408 with
    /// `Connection: close`, gRPC DEADLINE_EXCEEDED).
    #[error("{0}")]
    RequestTimeout(String),
    /// The request's deadline passed before a stream took it (HTTP 503, gRPC UNAVAILABLE).
    #[error("{0}")]
    Timeout(String),
    /// A failure of the server itself (HTTP 500, gRPC INTERNAL).
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status the error is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::NotFound(_) => 404,
            Error::RequestTimeout(_) => 408,
            Error::TooLarge(_) => 413,
            Error::Unavailable(_) | Error::Timeout(_) | Error::Overloaded(_) => 503,
            Error::Model(e) => runtime_status(e),
            Error::Config(_) | Error::Bind { .. } | Error::Start { .. } | Error::Internal(_) => 500,
        }
    }

    /// The gRPC status code the error is answered with.
    pub fn grpc_code(&self) -> tonic::Code {
        if let Error::Overloaded(_) = self {
            return tonic::Code::ResourceExhausted;
        }
        match self.http_status() {
            400 => tonic::Code::InvalidArgument,
            404 => tonic::Code::NotFound,
            408 => tonic::Code::DeadlineExceeded,
            413 => tonic::Code::ResourceExhausted,
            503 => tonic::Code::Unavailable,
            _ => tonic::Code::Internal,
        }
    }

    /// A label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::BadRequest(_) | Error::NotFound(_) | Error::TooLarge(_) => "invalid",
            Error::Unavailable(_) | Error::Overloaded(_) => "rejected",
            // A client that stops sending has gone, as far as the server can tell.
            Error::RequestTimeout(_) => "cancelled",
            Error::Timeout(_) => "timeout",
            Error::Model(e) if runtime_status(e) == 400 => "invalid",
            _ => "internal",
        }
    }
}

impl Error {
    /// The kind a start-up failure belongs to (for the CLI's exit code): a bad knob is a
    /// usage error, a port in use an I/O error, a model failure keeps its own kind.
    pub fn kind(&self) -> Option<repvgg_runtime::ErrorKind> {
        use repvgg_runtime::ErrorKind;
        match self {
            Error::Config(_) => Some(ErrorKind::Usage),
            Error::Bind { .. } | Error::Start { .. } => Some(ErrorKind::Io),
            Error::Model(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// A runtime failure as a request's answer (runtime errors are not `Clone`; a batch's
    /// failure is answered to each of its requests).
    pub(crate) fn from_runtime(e: &repvgg_runtime::Error) -> Error {
        match runtime_status(e) {
            400 => Error::BadRequest(e.to_string()),
            _ => Error::Internal(e.to_string()),
        }
    }

    /// The same error, said of image `i` of a request of several.
    pub(crate) fn in_image(self, i: usize) -> Error {
        match self {
            Error::BadRequest(m) => Error::BadRequest(format!("image {i}: {m}")),
            Error::Internal(m) => Error::Internal(format!("image {i}: {m}")),
            other => other,
        }
    }
}

/// A runtime error met while serving: bad input is the client's fault, the rest the server's.
fn runtime_status(e: &repvgg_runtime::Error) -> u16 {
    use repvgg_runtime::ErrorKind;
    match e.kind() {
        // Non-finite logits from finite weights come from extreme input values.
        ErrorKind::Input | ErrorKind::Limit | ErrorKind::Usage | ErrorKind::Numeric => 400,
        _ => 500,
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}
