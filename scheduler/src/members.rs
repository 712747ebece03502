//! The scheduler's listener with cluster TLS: each connection is a member's, and the member
//! its certificate names rides with every request on it (as a request extension), so the
//! service acts on who connected rather than on who a message claims to be.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use shoal_p2p::cluster::{self, Member};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// Handshakes under way at once; more connections wait in the kernel's accept queue.
const MAX_HANDSHAKES: usize = 256;

/// A member's connection.
pub struct MemberIo {
    tls: TlsStream<TcpStream>,
    member: Member,
}

impl Connected for MemberIo {
    type ConnectInfo = Member;

    fn connect_info(&self) -> Member {
        self.member.clone()
    }
}

/// The connections of members on `listener`: handshakes run in their own tasks (a stranger
/// that stalls one holds up no one), and a connection without a certificate of the cluster
/// ends there.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = io::Result<MemberIo>> {
    let (tx, mut rx) = mpsc::channel::<io::Result<MemberIo>>(64);
    let acceptor = TlsAcceptor::from(tls);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = handshakes.clone().acquire_owned() => p.expect("never closed"),
                () = tx.closed() => return,
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let peer = tcp.peer_addr().ok();
                match cluster::accept(&acceptor, tcp).await {
                    Ok((tls, member)) => {
                        let _ = tx.send(Ok(MemberIo { tls, member })).await;
                    }
                    Err(e) => tracing::debug!(?peer, error = %e, "refused a connection"),
                }
            });
        }
    });
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl AsyncRead for MemberIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for MemberIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}
