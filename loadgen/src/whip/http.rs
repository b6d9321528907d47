//! The WHIP HTTP exchanges (RFC 9725): `POST` the offer, `DELETE` the session resource. Plain
//! `http://` only, one HTTP/1.1 connection per request.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header;
use hyper_util::rt::TokioIo;

use crate::http_url::HttpUrl;

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A WHIP endpoint (or a session resource): where to connect and what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhipUrl {
    addr: SocketAddr,
    authority: String,
    path: String,
}

/// What a `POST` of an offer got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostAnswer {
    /// The status code.
    pub status: u16,
    /// The `Location` header, if any.
    pub location: Option<String>,
    /// The body (the SDP answer on a 201).
    pub body: String,
}

/// Why an HTTP exchange failed; the text is a failure reason of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpFailure {
    /// No answer within the request timeout.
    TimedOut,
    /// The connection failed or broke.
    Io,
}

impl HttpFailure {
    /// A short reason, e.g. `timed out`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::TimedOut => "timed out",
            Self::Io => "connection failed",
        }
    }
}

impl WhipUrl {
    /// Resolves `url` (`http://HOST:PORT/PATH`).
    pub async fn parse(url: &str) -> anyhow::Result<Self> {
        let HttpUrl {
            addr,
            authority,
            path,
        } = HttpUrl::resolve(url).await?;
        Ok(Self {
            addr,
            authority,
            path,
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The resource a `Location` header names, relative to this URL: an absolute path on the
    /// same server (what WHIP servers send), a path relative to this one, or an absolute
    /// `http://` URL on the same server. `None` for a URL elsewhere (not followed: a load test
    /// talks to one server).
    pub fn resolve(&self, location: &str) -> Option<Self> {
        let path = if let Some(rest) = location.strip_prefix("http://") {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            if !authority.eq_ignore_ascii_case(&self.authority) {
                return None;
            }
            if path.is_empty() { "/" } else { path }.to_owned()
        } else if location.starts_with('/') {
            location.to_owned()
        } else if location.is_empty() || location.contains("://") {
            return None;
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        Some(Self {
            addr: self.addr,
            authority: self.authority.clone(),
            path,
        })
    }

    /// `POST`s `offer` with `Content-Type: application/sdp` and the bearer token, if any.
    pub async fn post_offer(
        &self,
        offer: String,
        token: Option<&str>,
    ) -> Result<PostAnswer, HttpFailure> {
        let mut request = hyper::Request::post(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(header::CONTENT_TYPE, "application/sdp");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(offer)))
            .map_err(|_| HttpFailure::Io)?;
        let (status, headers, body) = self.exchange(request).await?;
        Ok(PostAnswer {
            status,
            location: headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// `DELETE`s this resource; returns the status.
    pub async fn delete(&self, token: Option<&str>) -> Result<u16, HttpFailure> {
        let mut request = hyper::Request::delete(self.path.as_str())
            .header(header::HOST, self.authority.as_str());
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|_| HttpFailure::Io)?;
        self.exchange(request).await.map(|(status, _, _)| status)
    }

    async fn exchange(
        &self,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<(u16, hyper::HeaderMap, Bytes), HttpFailure> {
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|_| HttpFailure::Io)?;
            let _ = stream.set_nodelay(true);
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|_| HttpFailure::Io)?;
            tokio::spawn(connection);
            let response = sender
                .send_request(request)
                .await
                .map_err(|_| HttpFailure::Io)?;
            let status = response.status().as_u16();
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|_| HttpFailure::Io)?
                .to_bytes();
            Ok((status, parts.headers, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or(Err(HttpFailure::TimedOut))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(path: &str) -> WhipUrl {
        WhipUrl {
            addr: "127.0.0.1:8080".parse().expect("addr"),
            authority: "127.0.0.1:8080".to_owned(),
            path: path.to_owned(),
        }
    }

    #[test]
    fn locations_resolve_against_the_endpoint() {
        let base = url("/whip?region=eu");
        let path = |l: &str| base.resolve(l).map(|u| u.path);
        assert_eq!(path("/whip/abc").as_deref(), Some("/whip/abc"));
        assert_eq!(path("abc").as_deref(), Some("/abc"));
        assert_eq!(
            url("/v1/whip/").resolve("s1").map(|u| u.path).as_deref(),
            Some("/v1/whip/s1")
        );
        assert_eq!(
            path("http://127.0.0.1:8080/whip/x").as_deref(),
            Some("/whip/x")
        );
        assert_eq!(path("http://other:8080/whip/x"), None);
        assert_eq!(path("https://127.0.0.1:8080/whip/x"), None);
        assert_eq!(path(""), None);
    }
}
