//! A minimal HTTP/1.1 client for the admin listener, shared by the commands that talk to a
//! running egressd (`schedules`, `health`): one request per connection, no pooling, since
//! each command sends one or two requests and exits.

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Sends one request to the admin listener at `admin` (`http://host:port`); returns the
/// status and the body as text.
pub(super) async fn call(
    admin: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: String,
) -> anyhow::Result<(u16, String)> {
    let base: http::Uri = admin.parse()?;
    let authority = base
        .authority()
        .ok_or_else(|| anyhow::anyhow!("--admin needs host:port, e.g. http://127.0.0.1:9901"))?
        .clone();
    let stream = TcpStream::connect(authority.as_str()).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority.as_str())
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body)))?)
        .await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
