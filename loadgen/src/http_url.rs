//! The plain `http://HOST:PORT/PATH` URLs the loadgen talks to (a WHIP endpoint, a Proxy's
//! `/metrics`), resolved once to the address to connect to and what to ask for.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};

/// A resolved `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `HOST[:PORT]` for the Host header.
    pub authority: String,
    /// Path and query (`/` when the URL has none).
    pub path: String,
}

impl HttpUrl {
    /// Parses and resolves `url`; only `http://` is supported.
    pub async fn resolve(url: &str) -> anyhow::Result<Self> {
        let uri: hyper::Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("{url:?}: only http:// is supported");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("{url:?} has no host"))?
            .clone();
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((authority.host(), port))
            .await
            .with_context(|| format!("cannot resolve {}", authority.host()))?
            .next()
            .with_context(|| format!("{} resolves to no address", authority.host()))?;
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        Ok(Self {
            addr,
            authority: authority.to_string(),
            path,
        })
    }
}
