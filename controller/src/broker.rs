//! The embedded MQTT broker (rumqttd) for `voltshare demo`, on a free
//! loopback port: 1883 may already belong to a system broker.

use std::net::{SocketAddr, TcpListener};

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("no free loopback port: {0}")]
    Port(std::io::Error),
    #[error("broker configuration: {0}")]
    Config(String),
    #[error("broker did not start listening on {0}")]
    NotListening(SocketAddr),
}

/// Starts rumqttd on 127.0.0.1 on a free port and returns that address. The
/// broker runs on its own thread (its `start` blocks) until the process ends.
pub fn start_embedded() -> Result<SocketAddr, BrokerError> {
    // Ask the OS for a free port, then hand it to the broker. Another process
    // could take it in between; the readiness check below catches that.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(BrokerError::Port)?
        .port();
    let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let max_payload = protocol::MAX_PACKET_BYTES;
    let toml = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "{addr}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = {max_payload}
    max_inflight_count = 500
    dynamic_filters = true
"#
    );
    let config: rumqttd::Config =
        toml::from_str(&toml).map_err(|e| BrokerError::Config(e.to_string()))?;
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| BrokerError::Config(e.to_string()))?;
    // Wait until it listens (bounded). Probe by trying to bind the port
    // ourselves rather than connecting, which the broker would log as a
    // failed MQTT handshake.
    for _ in 0..100 {
        if TcpListener::bind(addr).is_err() {
            return Ok(addr);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(BrokerError::NotListening(addr))
}
