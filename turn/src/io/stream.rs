//! TCP and TLS (TURNS) listeners: accept, frame, hand each frame to the core.
//!
//! Owns connection lifetime and stream framing (via [`crate::framing::frame_len`]). Each
//! connection is one 5-tuple; its allocation dies with it. Writes go through a bounded queue
//! to a writer task, shared by responses and peer data so their order is kept. Limits: a cap on
//! concurrent connections, a TLS handshake deadline, an idle deadline while no allocation
//! exists, and a read buffer never larger than two frames.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use super::Shared;
use super::relay::ClientSink;
use crate::core::{ClientOutput, FiveTuple, Now, Transport};
use crate::framing::{MAX_FRAME_LEN, frame_len};
use crate::redact::Redact;

/// A connection without an allocation is closed after this long.
const IDLE_WITHOUT_ALLOCATION: Duration = Duration::from_secs(30);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Queued writes per connection before peer data is dropped.
const WRITE_QUEUE: usize = 1024;

/// Loads a rustls server config from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, crate::StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    // Another part of the process may have installed it already; either way one is there.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| crate::StartError::Tls(format!("certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(crate::StartError::Tls(format!(
            "no certificate in {}",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| crate::StartError::Tls(format!("private key {}: {e}", key.display())))?;
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| crate::StartError::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Accepts connections until shutdown; `tls` turns the listener into TURNS.
pub async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "TURN accept error");
                    // Typically EMFILE: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let max = shared.cfg.max_stream_connections;
        if shared.stream_conns.fetch_add(1, Ordering::AcqRel) >= max {
            shared.stream_conns.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!("TURN stream connection refused: cap reached");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let shared2 = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _guard = ConnGuard(shared2.clone());
            match tls {
                None => serve(shared2, stream, peer, local, Transport::Tcp).await,
                Some(acc) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acc.accept(stream)).await {
                        Ok(Ok(s)) => serve(shared2, s, peer, local, Transport::Tls).await,
                        _ => tracing::debug!(client = %Redact(peer), "TURNS handshake failed"),
                    }
                }
            }
        });
    }
}

struct ConnGuard(Arc<Shared>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.stream_conns.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve<S>(
    shared: Arc<Shared>,
    stream: S,
    client: SocketAddr,
    server: SocketAddr,
    transport: Transport,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let ft = FiveTuple {
        client,
        server,
        transport,
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let flush_each = transport == Transport::Tls;
    let writer = tokio::spawn(async move {
        // One write per message. Over TLS each message must also be its own record, which
        // coturn's client (and perhaps others) expects: flushing after each one keeps rustls's
        // buffer empty, so a message is never split across records when the peer reads slowly.
        // Plain TCP coalesces and flushes once the queue is drained.
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(msg) = next {
                if wr.write_all(&msg).await.is_err() {
                    return;
                }
                if flush_each && wr.flush().await.is_err() {
                    return;
                }
                next = rx.try_recv().ok();
            }
            if wr.flush().await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut buf: Vec<u8> = Vec::with_capacity(8 * 1024);
    let mut chunk = vec![0u8; 8 * 1024];
    let mut shutdown = shared.shutdown.clone();
    let mut reply = Vec::with_capacity(512);
    // The deadline runs from the last moment the connection had an allocation (or from
    // accept), not from the last read: trickling Bindings cannot keep a connection forever.
    let mut unallocated_since = tokio::time::Instant::now();
    'conn: loop {
        let has_alloc = shared.lock().allocation_of(&ft).is_some();
        if has_alloc {
            unallocated_since = tokio::time::Instant::now();
        }
        let deadline = unallocated_since + IDLE_WITHOUT_ALLOCATION;
        let read = async {
            if has_alloc {
                rd.read(&mut chunk).await
            } else {
                match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
                    Ok(r) => r,
                    Err(_) => Ok(0),
                }
            }
        };
        let n = tokio::select! {
            _ = shutdown.changed() => break,
            r = read => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut consumed = 0;
        loop {
            let len = match frame_len(&buf[consumed..]) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(_) => break 'conn,
            };
            let frame = &buf[consumed..consumed + len];
            consumed += len;
            reply.clear();
            let now = Now {
                mono: std::time::Instant::now(),
                unix: crate::auth::unix_now(),
            };
            let mut send_reply = false;
            {
                let mut core = shared.lock();
                match core.handle_client(now, ft, frame, &mut reply) {
                    ClientOutput::Drop(_) => {}
                    ClientOutput::Reply => send_reply = true,
                    ClientOutput::ReplyAndRelease(r) => {
                        r.stop.notify_one();
                        send_reply = true;
                    }
                    ClientOutput::Relay {
                        relay,
                        peer,
                        payload,
                    } => {
                        if super::mmsg::send_one(relay.fd(), peer, &frame[payload], relay.v6)
                            .is_err()
                        {
                            shared.metrics.send_failures.inc();
                        }
                    }
                    ClientOutput::NeedRelay(p) => {
                        let sink = ClientSink::Stream(tx.clone());
                        super::complete_allocation(
                            &shared, &mut core, now, p, frame, &mut reply, sink,
                        );
                        send_reply = true;
                    }
                }
                shared.flush_stats(&mut core);
            }
            if send_reply && tx.send(reply.clone()).await.is_err() {
                break 'conn;
            }
        }
        buf.drain(..consumed);
        if buf.len() > 2 * MAX_FRAME_LEN {
            break;
        }
    }
    // RFC 8656 §3.1: the allocation lives and dies with its stream connection.
    let released = {
        let mut core = shared.lock();
        let r = core.remove_tuple(&ft);
        shared.flush_stats(&mut core);
        r
    };
    if let Some(r) = released {
        r.stop.notify_one();
    }
    drop(tx);
    let _ = writer.await;
}
