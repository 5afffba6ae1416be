//! Read-rate measurements for `voltshare bench agent`: the same register
//! block read back to back through a [`Link`] and through a bare
//! tokio-modbus client, so the cost of the link's bookkeeping (timeouts,
//! reconnect state, error mapping) is measured against the raw client in the
//! same run.

use crate::link::{Function, Link};
use protocol::Stopwatch;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_modbus::client::Reader;
use tokio_modbus::slave::SlaveContext;

/// Requests per second through a [`Link`] over `dur`.
pub async fn link_rate(link: &Link, unit: u8, addr: u16, qty: u16, dur: Duration) -> (u64, f64) {
    let sw = Stopwatch::start();
    let mut n = 0u64;
    while sw.elapsed() < dur {
        if link.read(unit, Function::Holding, addr, qty).await.is_ok() {
            n += 1;
        }
    }
    (n, n as f64 / sw.elapsed().as_secs_f64())
}

/// Requests per second through a bare tokio-modbus TCP client over `dur`.
pub async fn raw_rate(
    target: SocketAddr,
    unit: u8,
    addr: u16,
    qty: u16,
    dur: Duration,
) -> std::io::Result<(u64, f64)> {
    let stream = tokio::net::TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let mut ctx = tokio_modbus::client::tcp::attach(stream);
    ctx.set_slave(tokio_modbus::Slave(unit));
    let sw = Stopwatch::start();
    let mut n = 0u64;
    while sw.elapsed() < dur {
        if let Ok(Ok(_)) = ctx.read_holding_registers(addr, qty).await {
            n += 1;
        }
    }
    Ok((n, n as f64 / sw.elapsed().as_secs_f64()))
}
