//! An HTTP listener bounded like a public web server: the webhook faces the
//! internet (Microsoft Graph posts to it) and the admin port faces the
//! cluster, so neither may be held open, slowed down or grown without end
//! by whoever connects. Each connection has a deadline for its headers,
//! each request one for the whole exchange, connections are capped in total
//! and per source address, and a connection's buffer is capped. What bites
//! is counted (`xmppfed_listener_refused_total{listener,reason}`) and logged
//! at most once a minute per listener.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

use crate::Metrics;

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerBounds {
    /// A connection's request headers must have arrived this long after it
    /// starts waiting for them (idle keep-alive connections too).
    pub header_read_timeout: Duration,
    /// A request, body and answer included, must be done in this long.
    pub request_timeout: Duration,
    /// Connections held at once; more are closed as they come.
    pub max_connections: usize,
    /// Connections held at once from one source address.
    pub max_connections_per_source: usize,
}

/// As configured (`[webhook.limits]`, `[admin.limits]`; their defaults are
/// the listeners' defaults).
impl From<&xmppfed_config::ListenerLimits> for ListenerBounds {
    fn from(limits: &xmppfed_config::ListenerLimits) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(limits.header_read_timeout_secs.into()),
            request_timeout: Duration::from_secs(limits.request_timeout_secs.into()),
            max_connections: limits.max_connections as usize,
            max_connections_per_source: limits.max_connections_per_source as usize,
        }
    }
}

/// Request headers (and the read buffer) of one connection, at most: a
/// Graph notification's headers are a few hundred bytes.
const MAX_BUFFER: usize = 64 * 1024;
/// What bites is logged at most this often per listener.
const LOG_EVERY: Duration = Duration::from_secs(60);

pub type Refused = Family<Vec<(String, String)>, Counter>;

/// What the listener counts and when it last said so.
struct Watch {
    name: &'static str,
    refused: Refused,
    since: Instant,
    /// Milliseconds after `since` of the last log line (0: never).
    logged_ms: AtomicU64,
}

impl Watch {
    fn bite(&self, reason: &str) {
        self.refused
            .get_or_create(&vec![
                ("listener".to_owned(), self.name.to_owned()),
                ("reason".to_owned(), reason.to_owned()),
            ])
            .inc();
        let now = self.since.elapsed().as_millis() as u64 + 1;
        let last = self.logged_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if due
            && self
                .logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                listener = self.name,
                reason,
                "a listener bound refused or closed connections (counted in xmppfed_listener_refused_total; logged once a minute)"
            );
        }
    }
}

/// Open connections by source address.
#[derive(Default)]
struct Sources(Mutex<HashMap<IpAddr, usize>>);

/// One source's connection slot, given back when dropped.
struct Slot {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Sources {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            sources: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.sources.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A family shared by every listener of the process, registered once.
pub fn refused_counter(metrics: &Metrics) -> Refused {
    metrics.register(
        "listener_refused",
        "Connections an HTTP listener refused or closed, by listener and reason (connections, per_source, header_timeout, request_timeout)",
        Refused::default(),
    )
}

/// Serves `router` on `listener` within `bounds` until `shutdown`
/// completes; the connections then open finish their requests.
pub async fn serve_bounded(
    listener: TcpListener,
    router: Router,
    bounds: ListenerBounds,
    name: &'static str,
    refused: Refused,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let watch = Arc::new(Watch {
        name,
        refused,
        since: Instant::now(),
        logged_ms: AtomicU64::new(0),
    });
    let connections = Arc::new(Semaphore::new(bounds.max_connections));
    let sources = Arc::new(Sources::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                // Out of descriptors, or a connection reset before accept:
                // a moment's pause rather than a busy loop.
                Err(e) => {
                    tracing::debug!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            watch.bite("connections");
            continue;
        };
        let Some(slot) = sources.take(peer.ip(), bounds.max_connections_per_source) else {
            watch.bite("per_source");
            continue;
        };
        let (router, watch, mut stop) = (router.clone(), watch.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let _held = (permit, slot);
            let timed_out = watch.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let (router, watch) = (router.clone(), timed_out.clone());
                async move {
                    let request = request.map(axum::body::Body::new);
                    match tokio::time::timeout(bounds.request_timeout, router.oneshot(request))
                        .await
                    {
                        Ok(answer) => answer,
                        Err(_) => {
                            watch.bite("request_timeout");
                            Ok::<_, Infallible>(StatusCode::REQUEST_TIMEOUT.into_response())
                        }
                    }
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_read_timeout)
                .max_buf_size(MAX_BUFFER)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let stopping = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopping => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result
                && e.is_timeout()
            {
                watch.bite("header_timeout");
            }
        });
    }
    let _ = stop_tx.send(true);
    // Wait (briefly) for the connections to finish what they were doing.
    let all = u32::try_from(bounds.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(bounds.request_timeout, connections.acquire_many(all)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(bounds: ListenerBounds) -> (std::net::SocketAddr, Refused) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = Refused::default();
        let router = Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        let r = refused.clone();
        tokio::spawn(serve_bounded(
            listener,
            router,
            bounds,
            "test",
            r,
            std::future::pending(),
        ));
        (addr, refused)
    }

    fn count(refused: &Refused, reason: &str) -> u64 {
        refused
            .get_or_create(&vec![
                ("listener".to_owned(), "test".to_owned()),
                ("reason".to_owned(), reason.to_owned()),
            ])
            .get()
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer).await;
        answer
    }

    #[tokio::test]
    async fn half_sent_headers_are_closed_and_caps_refuse_the_excess() {
        let bounds = ListenerBounds {
            header_read_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(500),
            max_connections: 4,
            max_connections_per_source: 3,
        };
        let (addr, refused) = start(bounds).await;
        // Three half-sent requests fill this source's share.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
            held.push(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused_at_once = get(addr, "/").await;
        assert!(refused_at_once.is_empty(), "{refused_at_once}");
        assert_eq!(count(&refused, "per_source"), 1);
        // Their headers never finish: closed after the deadline, and the
        // source may connect again.
        tokio::time::sleep(Duration::from_millis(600)).await;
        for mut s in held {
            let mut rest = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut rest)).await;
            assert!(closed.is_ok(), "closed by the server");
        }
        assert_eq!(count(&refused, "header_timeout"), 3);
        assert!(get(addr, "/").await.ends_with("ok"));
        // A request that takes too long is answered 408.
        assert!(get(addr, "/slow").await.starts_with("HTTP/1.1 408"));
        assert_eq!(count(&refused, "request_timeout"), 1);
    }
}
