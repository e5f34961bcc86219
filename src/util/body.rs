//! The one HTTP body type egressd sends (responses it makes or forwards, requests it sends
//! upstream), and the text responses it makes up itself.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

/// Errors a body may end with: hyper's, or egressd's own (an upstream body gone idle).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body type of every response egressd sends and every request it sends upstream.
pub type HttpBody = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> HttpBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> HttpBody {
    full(Bytes::new())
}

/// A `text/plain` response with `status` and `text`.
pub fn text_response(status: StatusCode, text: impl Into<Bytes>) -> Response<HttpBody> {
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
