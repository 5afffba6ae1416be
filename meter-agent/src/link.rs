//! Modbus transports: one [`Link`] is one Modbus TCP connection (to one
//! device) or one RS-485 bus (Modbus RTU over a serial port, shared by every
//! unit id on it).
//!
//! What every link guarantees:
//! - **A timeout on every request** (and on connecting). A late answer is
//!   never matched to a later request: after a timeout the connection (or
//!   serial port) is dropped and opened again, because the stray frame would
//!   otherwise arrive as the answer to the next question.
//! - **Requests are serialized**: the link holds its connection behind one
//!   async mutex, so on an RTU bus exactly one request is on the wire at a
//!   time, whichever device it is for.
//! - **Reconnect with backoff**: a broken connection is re-opened on the next
//!   request; the first retry is immediate (so a device that merely dropped
//!   the connection is back within one poll), further consecutive failures
//!   wait 100 ms, 200 ms, … up to 10 s (measured with the injected
//!   [`Clock`]), and requests in the backoff window fail at once with
//!   [`LinkError::Backoff`] instead of hammering the device.
//! - **TCP_NODELAY** on TCP: Modbus frames are tiny request/response pairs
//!   and Nagle's algorithm would add up to 40 ms to each.
//! - **Errors keep their layer** ([`LinkError`]): a Modbus exception is an
//!   answer from a working device over a working link and leaves the
//!   connection up; a timeout or an IO error is a broken link.

use protocol::{Clock, UnixMs};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
pub use tokio_modbus::ExceptionCode;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{Request, Response, Slave};

/// Where a link goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Modbus TCP to a device or gateway.
    Tcp(SocketAddr),
    /// Modbus RTU on a serial port (8N1).
    Rtu { path: PathBuf, baud: u32 },
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tcp(a) => write!(f, "tcp://{a}"),
            Transport::Rtu { path, baud } => write!(f, "rtu://{}@{baud}", path.display()),
        }
    }
}

/// Which register table a read addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// Holding registers, function code 03.
    Holding,
    /// Input registers, function code 04.
    Input,
}

/// A failed request, by layer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// The device answered with a Modbus exception (01–0B): it is there and
    /// the link works, it just refuses this request.
    #[error("unit {unit} answered with exception {code:?}")]
    Exception { unit: u8, code: ExceptionCode },
    /// No answer within the timeout; the connection was dropped.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting failed or the connection broke.
    #[error("transport: {0}")]
    Transport(String),
    /// The link is waiting before it tries to reconnect.
    #[error("reconnect backoff: next attempt in {retry_in_ms} ms")]
    Backoff { retry_in_ms: u64 },
    /// The answer did not have the requested shape.
    #[error("malformed response: {0}")]
    Malformed(String),
}

impl LinkError {
    /// Whether this is a device's answer (the link itself is fine).
    pub fn is_exception(&self) -> bool {
        matches!(self, LinkError::Exception { .. })
    }
}

const BACKOFF_FIRST_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 10_000;

struct State {
    ctx: Option<Context>,
    /// Consecutive failed connection attempts (or broken connections).
    failures: u32,
    retry_at: Option<UnixMs>,
    connects: u64,
}

struct Inner {
    transport: Transport,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

/// A Modbus connection (TCP) or bus (RTU). Cheap to clone; clones share the
/// connection and its request serialization.
#[derive(Clone)]
pub struct Link(Arc<Inner>);

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("transport", &self.0.transport)
            .field("timeout", &self.0.timeout)
            .finish()
    }
}

impl Link {
    /// A link that connects lazily, on its first request.
    pub fn new(transport: Transport, timeout: Duration, clock: Arc<dyn Clock>) -> Link {
        Link(Arc::new(Inner {
            transport,
            timeout,
            clock,
            state: Mutex::new(State {
                ctx: None,
                failures: 0,
                retry_at: None,
                connects: 0,
            }),
        }))
    }

    /// Modbus TCP to `addr`.
    pub fn tcp(addr: SocketAddr, timeout: Duration, clock: Arc<dyn Clock>) -> Link {
        Link::new(Transport::Tcp(addr), timeout, clock)
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.0.timeout
    }

    /// Where this link goes.
    pub fn transport(&self) -> &Transport {
        &self.0.transport
    }

    /// How many times a connection was opened (1 after the first request).
    pub async fn connects(&self) -> u64 {
        self.0.state.lock().await.connects
    }

    /// Drops the connection (the next request reconnects at once).
    pub async fn disconnect(&self) {
        let mut st = self.0.state.lock().await;
        st.ctx = None;
        st.retry_at = None;
    }

    async fn open(&self) -> Result<Context, LinkError> {
        let t = self.0.timeout;
        match &self.0.transport {
            Transport::Tcp(addr) => {
                let stream = tokio::time::timeout(t, TcpStream::connect(addr))
                    .await
                    .map_err(|_| LinkError::Timeout(t))?
                    .map_err(|e| LinkError::Transport(format!("connect {addr}: {e}")))?;
                stream
                    .set_nodelay(true)
                    .map_err(|e| LinkError::Transport(e.to_string()))?;
                Ok(tokio_modbus::client::tcp::attach(stream))
            }
            Transport::Rtu { path, baud } => {
                let builder = tokio_serial::new(path.to_string_lossy(), *baud)
                    .data_bits(tokio_serial::DataBits::Eight)
                    .parity(tokio_serial::Parity::None)
                    .stop_bits(tokio_serial::StopBits::One);
                let port = tokio_serial::SerialStream::open(&builder)
                    .map_err(|e| LinkError::Transport(format!("open {}: {e}", path.display())))?;
                Ok(tokio_modbus::client::rtu::attach(port))
            }
        }
    }

    fn note_failure(&self, st: &mut State) {
        st.ctx = None;
        st.failures = st.failures.saturating_add(1);
        // The first failure after a working connection retries at once; the
        // device most likely just closed an idle connection.
        let wait = if st.failures <= 1 {
            0
        } else {
            (BACKOFF_FIRST_MS << (st.failures - 2).min(16)).min(BACKOFF_MAX_MS)
        };
        st.retry_at = Some(UnixMs(self.0.clock.now().0.saturating_add(wait)));
    }

    /// Sends one request to `unit` and waits for its answer, bounded by the
    /// link's timeout (connecting, if needed, counts against the same bound).
    pub async fn call(&self, unit: u8, request: Request<'static>) -> Result<Response, LinkError> {
        let mut st = self.0.state.lock().await;
        if st.ctx.is_none() {
            if let Some(at) = st.retry_at {
                let now = self.0.clock.now();
                if now < at {
                    return Err(LinkError::Backoff {
                        retry_in_ms: at.0 - now.0,
                    });
                }
            }
            match self.open().await {
                Ok(ctx) => {
                    st.ctx = Some(ctx);
                    st.connects += 1;
                }
                Err(e) => {
                    self.note_failure(&mut st);
                    return Err(e);
                }
            }
        }
        let t = self.0.timeout;
        let Some(ctx) = st.ctx.as_mut() else {
            return Err(LinkError::Transport("not connected".into()));
        };
        ctx.set_slave(Slave(unit));
        match tokio::time::timeout(t, ctx.call(request)).await {
            Err(_) => {
                self.note_failure(&mut st);
                Err(LinkError::Timeout(t))
            }
            Ok(Err(e)) => {
                self.note_failure(&mut st);
                Err(LinkError::Transport(e.to_string()))
            }
            Ok(Ok(Err(code))) => {
                st.failures = 0;
                Err(LinkError::Exception { unit, code })
            }
            Ok(Ok(Ok(resp))) => {
                st.failures = 0;
                st.retry_at = None;
                Ok(resp)
            }
        }
    }

    /// Reads `qty` registers at `addr`.
    pub async fn read(
        &self,
        unit: u8,
        function: Function,
        addr: u16,
        qty: u16,
    ) -> Result<Vec<u16>, LinkError> {
        let req = match function {
            Function::Holding => Request::ReadHoldingRegisters(addr, qty),
            Function::Input => Request::ReadInputRegisters(addr, qty),
        };
        let words = match self.call(unit, req).await? {
            Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w) => w,
            other => return Err(LinkError::Malformed(format!("{other:?}"))),
        };
        if words.len() != usize::from(qty) {
            return Err(LinkError::Malformed(format!(
                "asked for {qty} registers, got {}",
                words.len()
            )));
        }
        Ok(words)
    }

    /// Writes holding registers starting at `addr`.
    pub async fn write(&self, unit: u8, addr: u16, words: &[u16]) -> Result<(), LinkError> {
        let req = Request::WriteMultipleRegisters(addr, words.to_vec().into());
        match self.call(unit, req).await? {
            Response::WriteMultipleRegisters(_, _) => Ok(()),
            other => Err(LinkError::Malformed(format!("{other:?}"))),
        }
    }
}

/// The `sunspec` crate drives discovery and model reads through this; errors
/// map onto its `ModbusError` so that its discovery logic (move on at
/// `IllegalDataAddress`, stop at the end model) sees what it expects.
impl sunspec::client::AsyncModbusClient for Link {
    async fn read_registers(
        &self,
        slave_id: u8,
        addr: u16,
        len: u16,
    ) -> Result<Vec<u16>, sunspec::client::ModbusError> {
        self.read(slave_id, Function::Holding, addr, len)
            .await
            .map_err(to_sunspec)
    }

    async fn write_registers(
        &self,
        slave_id: u8,
        addr: u16,
        data: &[u16],
    ) -> Result<(), sunspec::client::ModbusError> {
        self.write(slave_id, addr, data).await.map_err(to_sunspec)
    }
}

fn to_sunspec(e: LinkError) -> sunspec::client::ModbusError {
    use sunspec::client::ModbusError as M;
    match e {
        LinkError::Exception { code, .. } => M::from(code),
        LinkError::Timeout(_) => M::Timeout,
        LinkError::Transport(s) | LinkError::Malformed(s) => M::IO(std::io::Error::other(s)),
        LinkError::Backoff { retry_in_ms } => M::IO(std::io::Error::other(format!(
            "reconnect backoff ({retry_in_ms} ms)"
        ))),
    }
}

/// The reverse mapping, for errors that come back out of the `sunspec` crate.
pub(crate) fn from_sunspec(
    unit: u8,
    timeout: Duration,
    e: sunspec::client::ModbusError,
) -> LinkError {
    use sunspec::client::ModbusError as M;
    let code = match e {
        M::Timeout => return LinkError::Timeout(timeout),
        M::IO(e) => return LinkError::Transport(e.to_string()),
        M::Protocol(e) => return LinkError::Transport(e.to_string()),
        M::IllegalFunction => ExceptionCode::IllegalFunction,
        M::IllegalDataAddress => ExceptionCode::IllegalDataAddress,
        M::IllegalDataValue => ExceptionCode::IllegalDataValue,
        M::ServerDeviceFailure => ExceptionCode::ServerDeviceFailure,
        M::Acknowledge => ExceptionCode::Acknowledge,
        M::ServerDeviceBusy => ExceptionCode::ServerDeviceBusy,
        M::MemoryParityError => ExceptionCode::MemoryParityError,
        M::GatewayPathUnavailable => ExceptionCode::GatewayPathUnavailable,
        M::GatewayTargetDevice => ExceptionCode::GatewayTargetDevice,
        M::Custom(c) => ExceptionCode::Custom(c),
    };
    LinkError::Exception { unit, code }
}
