//! Modbus TCP proxy: many clients share one upstream connection (or RTU
//! bus), so that an inverter that accepts a single Modbus TCP client can be
//! read by the meter agent and by another program (a vendor app, a home
//! automation system) at the same time.
//!
//! Each downstream request is forwarded unchanged (unit id, function, data)
//! over the upstream [`Link`], one at a time; the device's exception goes
//! back to the client as the same exception. When the upstream link fails
//! (timeout, broken connection, backoff), the client gets
//! `GatewayTargetDevice` (0x0B) and the link reconnects on the next request,
//! so a client is never left hanging longer than the link's timeout.

use crate::link::{Link, LinkError};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};
use tracing::{debug, info, warn};

#[derive(Clone)]
struct ProxyService {
    upstream: Link,
}

impl tokio_modbus::server::Service for ProxyService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let link = self.upstream.clone();
        Box::pin(async move {
            match link.call(req.slave, req.request).await {
                Ok(r) => Ok(r),
                Err(LinkError::Exception { code, .. }) => Err(code),
                Err(error) => {
                    warn!(%error, unit = req.slave, "upstream failed; answering GatewayTargetDevice");
                    Err(ExceptionCode::GatewayTargetDevice)
                }
            }
        })
    }
}

/// Serves the proxy on `bind`; returns the bound address and the task.
pub async fn spawn_proxy(
    bind: SocketAddr,
    upstream: Link,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(bind).await?;
    let local = listener.local_addr()?;
    info!(%local, upstream = %upstream.transport(), "modbus proxy listening");
    let handle = tokio::spawn(async move {
        let server = Server::new(listener);
        let on_connected = |stream: TcpStream, peer: SocketAddr| {
            let service = ProxyService {
                upstream: upstream.clone(),
            };
            async move {
                stream.set_nodelay(true)?;
                debug!(%peer, "proxy client connected");
                Ok(Some((service, stream)))
            }
        };
        let on_error = |error: io::Error| debug!(%error, "proxy client connection ended");
        if let Err(error) = server.serve(&on_connected, on_error).await {
            warn!(%error, "modbus proxy stopped");
        }
    });
    Ok((local, handle))
}
