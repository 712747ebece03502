//! The accept loop every Shoal TCP server shares.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Accepts connections on `listener` until `shutdown` resolves, at most `max_connections` open
/// at once (more wait in the kernel's accept queue), and runs `serve` on each in its own task.
/// Accept errors (out of file descriptors and the like) back off; the loop never stops on them.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    max_connections: usize,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
    serve: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let connections = Arc::new(Semaphore::new(max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.expect("never closed"),
            () = &mut shutdown => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, server = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = serve(stream);
        tokio::spawn(async move {
            let _permit = permit;
            conn.await;
        });
    }
}
