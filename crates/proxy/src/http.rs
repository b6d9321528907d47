//! The private HTTP listener: `/metrics` (Prometheus text), `/livez`, `/readyz`.
//!
//! The router asks a [`Health`] (the gateway state) for readiness and to refresh its gauges right
//! before each scrape, so capacity gauges are exact at the instant Prometheus reads them rather
//! than as fresh as the last event. The admin API (`crate::admin`) is merged into the same router.

use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;

/// `Content-Type` of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the HTTP endpoints need from the running node.
pub trait Health: Send + Sync + 'static {
    /// `Ok` when the node should receive new sessions; `Err(reason)` at the high-water mark, in
    /// maintenance or while draining. Liveness never asks this.
    fn readiness(&self) -> Result<(), String>;

    /// Sets gauges that are read rather than counted (sessions active, per-Backend state); called
    /// before every `/metrics` render.
    fn refresh_gauges(&self);
}

/// A [`Health`] that is always ready and has no gauges to refresh; a placeholder until the gateway
/// state exists, and handy in tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysReady;

impl Health for AlwaysReady {
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }

    fn refresh_gauges(&self) {}
}

#[derive(Clone)]
struct AppState {
    health: Arc<dyn Health>,
    metrics: PrometheusHandle,
}

/// JSON body of HTTP errors: a stable machine code and a human message.
#[derive(Debug, Serialize)]
struct ErrorBody {
    code: &'static str,
    message: String,
}

/// The private router. Unknown paths answer 404 and wrong methods 405, both with a JSON body
/// `{"code": "NOT_FOUND" | "METHOD_NOT_ALLOWED", "message": ...}`.
pub fn router(health: Arc<dyn Health>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(AppState { health, metrics })
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    state.health.refresh_gauges();
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

/// Live while every media worker runs: a dead worker is not restarted (its relays' sockets went
/// with it), so the process is to be replaced.
async fn livez() -> Response {
    let (alive, started) = crate::relay::workers_alive();
    if alive < started {
        let body = format!("media workers: {alive} of {started} running\n");
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    "ok".into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.health.readiness() {
        Ok(()) => "ready".into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        )
            .into_response(),
    }
}

async fn not_found(uri: Uri) -> Response {
    let message = format!("no route for {}", uri.path());
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody {
            code: "NOT_FOUND",
            message,
        }),
    )
        .into_response()
}

async fn method_not_allowed(uri: Uri) -> Response {
    let message = format!("method not allowed on {}", uri.path());
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(ErrorBody {
            code: "METHOD_NOT_ALLOWED",
            message,
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    use super::*;

    /// A [`Health`] whose readiness the test sets and which counts refreshes.
    #[derive(Default)]
    struct Probe {
        not_ready: Mutex<Option<String>>,
        refreshes: AtomicU32,
    }

    impl Health for Probe {
        fn readiness(&self) -> Result<(), String> {
            self.not_ready.lock().unwrap().clone().map_or(Ok(()), Err)
        }

        fn refresh_gauges(&self) {
            let n = self.refreshes.fetch_add(1, Ordering::SeqCst) + 1;
            metrics::gauge!("voxgate_http_test_refreshes").set(f64::from(n));
        }
    }

    struct Reply {
        status: u16,
        headers: String,
        body: String,
    }

    /// One HTTP/1.1 request over a fresh connection (`Connection: close`, so the body ends at EOF).
    async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let (headers, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
        Reply {
            status,
            headers: headers.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }

    async fn start(
        health: Arc<dyn Health>,
    ) -> (
        SocketAddr,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let handle = crate::metrics::install().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router(health, handle), async move {
            let _ = stopped.await;
        }));
        (addr, stop, server)
    }

    #[tokio::test]
    async fn endpoints_answer_and_shutdown_is_graceful() {
        let probe = Arc::new(Probe::default());
        let (addr, stop, server) = start(probe.clone()).await;

        let live = request(addr, "GET", "/livez").await;
        assert_eq!((live.status, live.body.as_str()), (200, "ok"));

        let ready = request(addr, "GET", "/readyz").await;
        assert_eq!((ready.status, ready.body.as_str()), (200, "ready"));
        *probe.not_ready.lock().unwrap() = Some("draining".to_owned());
        let ready = request(addr, "GET", "/readyz").await;
        assert_eq!(
            (ready.status, ready.body.as_str()),
            (503, "not ready: draining")
        );
        // Liveness does not depend on readiness.
        assert_eq!(request(addr, "GET", "/livez").await.status, 200);

        let scrape = request(addr, "GET", "/metrics").await;
        assert_eq!(scrape.status, 200);
        assert!(
            scrape
                .headers
                .contains("content-type: text/plain; version=0.0.4"),
            "{}",
            scrape.headers
        );
        assert!(
            scrape.body.contains("voxgate_http_test_refreshes 1"),
            "refresh ran before render:\n{}",
            scrape.body
        );
        assert!(
            scrape.body.contains("voxgate_build_info{version="),
            "{}",
            scrape.body
        );
        let scrape = request(addr, "GET", "/metrics").await;
        assert!(scrape.body.contains("voxgate_http_test_refreshes 2"));

        let missing = request(addr, "GET", "/nope").await;
        assert_eq!(missing.status, 404);
        assert!(missing.headers.contains("content-type: application/json"));
        assert_eq!(
            missing.body,
            r#"{"code":"NOT_FOUND","message":"no route for /nope"}"#
        );

        let wrong = request(addr, "POST", "/livez").await;
        assert_eq!(wrong.status, 405);
        assert!(
            wrong.body.contains(r#""code":"METHOD_NOT_ALLOWED""#),
            "{}",
            wrong.body
        );

        // Graceful shutdown: the serve future ends (and drops the listener) once told to. A
        // connect afterwards proves little here: tests in parallel may reuse the port at once.
        stop.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("the server did not stop")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn always_ready_is_ready() {
        let (addr, stop, server) = start(Arc::new(AlwaysReady)).await;
        assert_eq!(request(addr, "GET", "/readyz").await.body, "ready");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
