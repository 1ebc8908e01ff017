//! Minimal HTTP clients for talking to the gateway: one fresh connection per
//! request (HTTP/1.1 over TCP or a Unix socket, or h2c), so tests see exactly
//! what one caller sees.

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The `errors[0].code` of a PayMongo-shaped error body.
    pub fn error_code(&self) -> String {
        let v = self.json();
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not a PayMongo error body: {v}"))
            .to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    build(method, path, "gateway.local", headers, body.as_bytes())
}

fn build(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::copy_from_slice(body))).unwrap()
}

async fn over<IO>(io: IO, req: Request<Full<Bytes>>) -> Result<Resp, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// HTTP/1.1 request on a fresh TCP connection; panics on transport errors.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    try_send(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Like [`send`] but returns transport errors.
pub async fn try_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Resp, String> {
    connect_and_send(addr, request(method, path, headers, body)).await
}

async fn connect_and_send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Resp, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    over(tcp, req).await
}

/// HTTP/1.1 over a Unix socket.
pub async fn send_unix(
    path: &Path,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let s = tokio::net::UnixStream::connect(path).await.unwrap();
    over(s, request(method, uri, headers, body)).await.unwrap()
}

/// HTTP/2 with prior knowledge (h2c).
pub async fn send_h2c(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = request(
        method,
        &format!("http://gateway.local{path}"),
        headers,
        body,
    );
    req.headers_mut().remove("host");
    let resp = tx.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn request_bytes(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Request<Full<Bytes>> {
    build(method, path, "localhost", headers, body)
}

/// A TLS connection to `addr` that trusts only `ca` and verifies the name
/// `localhost`, offering ALPN http/1.1.
pub async fn connect_tls(
    addr: SocketAddr,
    ca: &super::TestCa,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let mut cfg = (*super::ca::client_config(ca)).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// HTTP/1.1 over a fresh TLS connection (trusting `ca`) with a byte body;
/// transport errors are returned.
pub async fn try_send_tls(
    addr: SocketAddr,
    ca: &super::TestCa,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp, String> {
    let tls = connect_tls(addr, ca).await?;
    over(tls, request_bytes(method, path, headers, body)).await
}

/// Like [`try_send_tls`] but panics on transport errors.
pub async fn send_tls(
    addr: SocketAddr,
    ca: &super::TestCa,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    try_send_tls(addr, ca, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Plain HTTP/1.1 with a byte body (for a `plaintext = true` listener).
pub async fn send_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp, String> {
    connect_and_send(addr, request_bytes(method, path, headers, body)).await
}

/// The `Authorization` value PayMongo expects for `key`: Basic, key as
/// username, empty password. Computed independently of the gateway.
pub fn basic(key: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}
