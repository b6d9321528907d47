//! Control commands run against a live node over its private HTTP listener: `voxgate drain`.
//!
//! The client side of the admin API, for a preStop hook or an operator's shell: it reads the same
//! configuration as the node (file, `VOXGATE_*` environment) to find the listener, the node id and
//! the admin key.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::config::Config;

/// Asks the node of `config` to drain; with `wait`, returns only once it has exited (its
/// listener closes), or fails after `timeout`.
pub async fn drain(config: &Config, wait: bool, timeout: Duration) -> anyhow::Result<()> {
    let key = &config.cluster.admin_key;
    if key.is_empty() {
        bail!("cluster.admin_key is empty: set VOXGATE_CLUSTER__ADMIN_KEY to the node's admin key");
    }
    let addr = config.http.listen;
    let path = format!("/v1/nodes/{}/drain", config.node.id);
    let (status, body) = request(addr, "POST", &path, Some(key))
        .await
        .with_context(|| format!("asking {addr} to drain"))?;
    if status != 202 {
        bail!("{addr} refused the drain: {status} {body}");
    }
    println!("{body}");
    if !wait {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        // Only a refused connection means the node is gone; a slow answer means it is busy.
        if tokio::net::TcpStream::connect(addr)
            .await
            .is_err_and(|err| err.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            println!("drained: the node has exited");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("the node at {addr} was still up after {timeout:?}")
}

/// One HTTP/1.1 request: status and body text.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string());
        if let Some(key) = bearer {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let response = sender
            .send_request(builder.body(Empty::<Bytes>::new())?)
            .await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .context("no answer within 5 s")?
}
