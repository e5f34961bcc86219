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

/// A request body from a client that stopped sending for longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body bytes for {0:?}")]
pub struct RequestBodyIdle(pub std::time::Duration);

/// A request body that ends with [`RequestBodyIdle`] when the client goes quiet for `idle`
/// mid-body: a slow upload cannot hold an upstream connection (and a client slot) forever.
pub struct IdleRequestBody {
    inner: HttpBody,
    idle: std::time::Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl IdleRequestBody {
    pub fn new(inner: HttpBody, idle: std::time::Duration) -> Self {
        IdleRequestBody {
            inner,
            idle,
            timer: None,
        }
    }
}

impl hyper::body::Body for IdleRequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(RequestBodyIdle(idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
