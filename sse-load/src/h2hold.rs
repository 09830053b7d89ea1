//! `hold --h2-streams-per-conn K`: many SSE streams over few HTTP/2 connections (cleartext
//! with prior knowledge for `http://`, ALPN `h2` over TLS for `https://`), built on hyper's
//! client. Each connection carries K streams; a stream is ready once its first bytes (the
//! `retry:` line) arrived. Events are counted, not checked: this mode measures memory.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{Shared, source_for};
use crate::target::UrlTemplate;

/// Opens `conns` streams, `per_conn` on each connection, round-robin over `tpls`; returns the
/// tasks to wait for at the end (they end when `stop` flips).
pub fn open(
    tpls: &[Arc<UrlTemplate>],
    conns: usize,
    per_conn: usize,
    source_addrs: u8,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let per_conn = per_conn.max(1);
    let connections = conns.div_ceil(per_conn);
    (0..connections)
        .map(|i| {
            let tpl = tpls[i % tpls.len()].clone();
            let first = i * per_conn;
            let streams = per_conn.min(conns - first);
            let shared = shared.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                if let Err(kind) =
                    connection(&tpl, i, first, streams, source_addrs, &shared, stop).await
                {
                    shared.failed.fetch_add(streams, Relaxed);
                    shared.error(&kind);
                }
            })
        })
        .collect()
}

/// One HTTP/2 connection with `streams` streams, numbered from `first`.
async fn connection(
    tpl: &UrlTemplate,
    index: usize,
    first: usize,
    streams: usize,
    source_addrs: u8,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let source = source_for(index, source_addrs, tpl.addr);
    let conn = crate::tls::open(tpl, source, true).await?;
    shared.connected.fetch_add(1, Relaxed);
    let (sender, driver) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(conn))
        .await
        .map_err(|e| format!("h2_handshake_{e}"))?;
    let driver = tokio::spawn(driver);
    let scheme = if tpl.tls { "https" } else { "http" };
    let mut tasks = Vec::with_capacity(streams);
    for n in first..first + streams {
        let path = tpl.render(shared.user_base + n % shared.users, n);
        let uri = format!("{scheme}://{}{path}", tpl.host_header);
        let mut sender = sender.clone();
        let shared = shared.clone();
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let request = match hyper::Request::get(uri).body(Empty::new()) {
                Ok(r) => r,
                Err(_) => {
                    shared.failed.fetch_add(1, Relaxed);
                    shared.error("h2_bad_uri");
                    return;
                }
            };
            let response = tokio::select! {
                _ = stop.changed() => return,
                r = sender.send_request(request) => r,
            };
            let mut body = match response {
                Ok(r) if r.status() == 200 => r.into_body(),
                Ok(r) => {
                    shared.failed.fetch_add(1, Relaxed);
                    shared.error(&format!("h2_status_{}", r.status().as_u16()));
                    return;
                }
                Err(_) => {
                    shared.failed.fetch_add(1, Relaxed);
                    shared.error("h2_request");
                    return;
                }
            };
            let mut ready = false;
            loop {
                let frame = tokio::select! {
                    _ = stop.changed() => return,
                    f = body.frame() => f,
                };
                match frame {
                    Some(Ok(frame)) => {
                        if frame.is_data() && !ready {
                            ready = true;
                            shared.ready.fetch_add(1, Relaxed);
                            shared.last_ready_ns.fetch_max(shared.now_ns(), Relaxed);
                        } else if frame.is_data() {
                            shared.events.fetch_add(1, Relaxed);
                        }
                    }
                    Some(Err(_)) | None => {
                        if ready {
                            shared.dropped.fetch_add(1, Relaxed);
                        } else {
                            shared.failed.fetch_add(1, Relaxed);
                        }
                        shared.error("h2_stream_ended");
                        return;
                    }
                }
            }
        }));
    }
    let _ = stop.changed().await;
    for task in tasks {
        let _ = task.await;
    }
    drop(sender);
    driver.abort();
    Ok(())
}
