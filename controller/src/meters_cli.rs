//! The meter subcommands of `voltshare`: `scan` (find Modbus devices and
//! print a ready config snippet), `proxy` (share one Modbus TCP device or RS-485
//! bus between several clients) and `bench agent` (memory, CPU and read rate
//! of the meter agent).
//!
//! `bench agent` measures the agent in its own process: it runs
//! `voltshare-agent --bench-child …` (the agent-only binary next to this
//! one) and, for comparison, this whole binary as `voltshare bench agent
//! --child-modbus …`; each child runs only the meter agent (polling two
//! simulated devices at 1 Hz, signing, storing in the outbox and publishing
//! to the broker), and the parent samples the child's `/proc/PID/status`
//! (VmRSS, VmHWM, RssAnon, RssFile) and `/proc/PID/stat` (utime + stime).
//!
//! Where the memory goes: almost all of an agent process's resident set is
//! file-backed, the pages of the executable it touches (the kernel maps the
//! neighbours of every page it faults in), not heap: the agent's own heap,
//! SQLite's page cache (256 KiB, no mmap), the one pool connection's worker
//! thread and the current-thread runtime together are about 1 MB. A
//! 30 MB binary with every role in it touches far more pages for the same
//! work than `voltshare-agent`, which links only the agent. (The full
//! binary allocates with mimalloc, built to commit memory on demand: see
//! `.cargo/config.toml`; with its default eager commit the full binary's
//! agent kept about 9 MB of anonymous memory instead of 1.7 MB.)

use crate::cli::CliError;
use clap::Args;
use meter_agent::capability::GridMeter;
use meter_agent::link::{Link, Transport};
use meter_agent::regmap::{MappedDevice, shipped};
use meter_agent::simulator::{INVERTER_UNIT, METER_UNIT, SimUnit, spawn_devices};
use meter_agent::sunspec_dev::SunSpecDevice;
use meter_agent::{AgentConfig, AgentStats, SimHousehold, run_agent};
use protocol::{Clock, GridId, HouseholdId, MeterId, Stopwatch, SystemClock};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(e.into()))
}

fn transport(
    host: Option<&str>,
    port: u16,
    serial: Option<&PathBuf>,
    baud: u32,
) -> Result<Transport, CliError> {
    match (host, serial) {
        (Some(h), None) => {
            let addr = (h, port)
                .to_socket_addrs()
                .map_err(|e| CliError::Usage(format!("--host {h:?}: {e}")))?
                .next()
                .ok_or_else(|| CliError::Usage(format!("--host {h:?}: no address")))?;
            Ok(Transport::Tcp(addr))
        }
        (None, Some(p)) => Ok(Transport::Rtu {
            path: p.clone(),
            baud,
        }),
        _ => Err(CliError::Usage(
            "give either --host (Modbus TCP) or --serial (Modbus RTU)".into(),
        )),
    }
}

/// `voltshare scan`.
#[derive(Args, Debug, Clone)]
pub struct ScanArgs {
    /// Modbus TCP host (a device or a gateway).
    #[arg(long, conflicts_with = "serial")]
    pub host: Option<String>,
    #[arg(long, default_value_t = 502)]
    pub port: u16,
    /// Serial port of an RS-485 adapter (Modbus RTU, 8N1).
    #[arg(long)]
    pub serial: Option<PathBuf>,
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// Only this unit id (default: 1 to 247).
    #[arg(long)]
    pub unit: Option<u8>,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_ms: u64,
}

/// Scans unit ids, prints what answers and a config snippet.
pub fn scan(a: ScanArgs) -> Result<(), CliError> {
    let t = transport(a.host.as_deref(), a.port, a.serial.as_ref(), a.baud)?;
    let units: Vec<u8> = match a.unit {
        Some(u) => vec![u],
        None => (1..=247).collect(),
    };
    let rt = runtime()?;
    let out = rt.block_on(scan_units(t, units, Duration::from_millis(a.timeout_ms)));
    print!("{out}");
    Ok(())
}

/// What a scan found, for the config snippet.
#[derive(Debug, Default)]
struct Found {
    /// SunSpec grid meters and inverters, by unit id, in scan order.
    meters: Vec<u8>,
    inverters: Vec<u8>,
    /// Devices the `[meter_agent]` section cannot name yet: (unit, what).
    other: Vec<(u8, String)>,
}

impl Found {
    fn is_empty(&self) -> bool {
        self.meters.is_empty() && self.inverters.is_empty() && self.other.is_empty()
    }

    /// A `[meter_agent]` section in the format of `controller::config`
    /// (SunSpec grid meter and inverter behind one Modbus TCP address),
    /// ready to paste into a gateway config; what it cannot express is
    /// listed as comments.
    fn snippet(&self, t: &Transport) -> String {
        let mut s = String::new();
        let tcp = match t {
            Transport::Tcp(a) => Some(*a),
            Transport::Rtu { .. } => None,
        };
        match (tcp, self.meters.first()) {
            (Some(addr), Some(meter)) => {
                s.push_str("[meter_agent]\nenabled = true\n");
                s.push_str("# A name for this metering point (letters, digits, '-', '_').\n");
                s.push_str("meter = \"main\"\n");
                s.push_str(&format!("modbus = \"{addr}\"\nmeter_unit = {meter}\n"));
                match self.inverters.first() {
                    Some(inv) => s.push_str(&format!("inverter_unit = {inv}\n")),
                    None => s.push_str("# No SunSpec inverter found.\ninverter_unit = 0\n"),
                }
                s.push_str("poll_ms = 1000\n");
            }
            (Some(_), None) => {
                s.push_str("# No SunSpec grid meter found: [meter_agent] needs one.\n");
            }
            (None, _) => s.push_str(
                "# [meter_agent] reads Modbus TCP only for now; share this RS-485 bus\n\
                 # over TCP with `voltshare proxy --serial ...` and scan the proxy.\n",
            ),
        }
        for u in self.meters.iter().skip(1) {
            s.push_str(&format!(
                "# Further SunSpec meter at unit {u} (not used).\n"
            ));
        }
        for u in self.inverters.iter().skip(1) {
            s.push_str(&format!(
                "# Further SunSpec inverter at unit {u} (not used).\n"
            ));
        }
        for (u, what) in &self.other {
            s.push_str(&format!(
                "# Unit {u}: {what}; register-map devices cannot be configured in\n\
                 # [meter_agent] yet.\n"
            ));
        }
        s
    }
}

/// The scan itself, returning the report (for tests and the CLI).
pub async fn scan_units(t: Transport, units: Vec<u8>, timeout: Duration) -> String {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let link = Link::new(t.clone(), timeout, clock);
    let mut report = String::new();
    let mut found = Found::default();
    for unit in units {
        match SunSpecDevice::discover(&link, unit).await {
            Ok(d) => {
                let c = d.common.clone().unwrap_or_default();
                report.push_str(&format!(
                    "unit {unit}: SunSpec at {} models {:?} ({} {} serial {})\n",
                    d.base,
                    d.model_ids(),
                    c.manufacturer,
                    c.model,
                    c.serial
                ));
                if d.has_meter() {
                    found.meters.push(unit);
                } else if d.has_inverter() {
                    found.inverters.push(unit);
                } else if d.has_storage() {
                    found.other.push((unit, "SunSpec storage".into()));
                }
            }
            Err(_) => {
                // Not SunSpec: does a shipped map's grid meter answer with
                // plausible values?
                for m in shipped() {
                    let d = MappedDevice::new(link.clone(), unit, m.clone());
                    if let Ok(v) = d.read_grid().await {
                        report.push_str(&format!(
                            "unit {unit}: answers like {} ({}): {} W, import {} Wh, export {} Wh\n",
                            m.name, m.id, v.power.0, v.energy.import_wh.0, v.energy.export_wh.0
                        ));
                        found
                            .other
                            .push((unit, format!("{} (map {})", m.name, m.id)));
                        break;
                    }
                }
            }
        }
    }
    if found.is_empty() {
        report.push_str("no device answered\n");
    } else {
        report.push_str("\n# config snippet for the meter agent (paste into the gateway config)\n");
        report.push_str(&found.snippet(&t));
    }
    report
}

/// `voltshare proxy`.
#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Where clients connect.
    #[arg(long, default_value = "0.0.0.0:5020")]
    pub listen: SocketAddr,
    /// The device (Modbus TCP) that accepts only one client.
    #[arg(long, conflicts_with = "serial")]
    pub host: Option<String>,
    #[arg(long, default_value_t = 502)]
    pub port: u16,
    /// Or an RS-485 bus to share.
    #[arg(long)]
    pub serial: Option<PathBuf>,
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

/// Runs the proxy until Ctrl-C.
pub fn proxy(a: ProxyArgs) -> Result<(), CliError> {
    let t = transport(a.host.as_deref(), a.port, a.serial.as_ref(), a.baud)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let link = Link::new(
            t,
            Duration::from_millis(a.timeout_ms),
            Arc::new(SystemClock),
        );
        let (addr, task) = meter_agent::proxy::spawn_proxy(a.listen, link)
            .await
            .map_err(|e| CliError::Usage(format!("--listen {}: {e}", a.listen)))?;
        eprintln!("voltshare: modbus proxy on {addr}");
        let _ = tokio::signal::ctrl_c().await;
        task.abort();
        Ok(())
    })
}

/// `voltshare bench agent`.
#[derive(Args, Debug, Clone)]
pub struct BenchAgentArgs {
    /// Seconds of measurement (after a warm-up of 3 s).
    #[arg(long, default_value_t = 20)]
    pub secs: u64,
    /// Seconds of each read-rate run.
    #[arg(long, default_value_t = 3)]
    pub rate_secs: u64,
    /// MQTT broker (mqtt://HOST:PORT).
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    /// Internal: run only the agent against this Modbus address.
    #[arg(long, hide = true)]
    pub child_modbus: Option<SocketAddr>,
    #[arg(long, hide = true)]
    pub child_dir: Option<PathBuf>,
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of `pid`, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after the last ')'.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the man page, utime 14, stime 15.
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some(ut + st)
}

const AGENT_USAGE: &str = "usage: voltshare-agent --config FILE\n\
    Runs the [meter_agent] role of a gateway config alone (the other roles of\n\
    the file are ignored).";

/// `voltshare-agent`'s main: `--config FILE`, or the hidden
/// `--bench-child MODBUS DIR BROKER` of `voltshare bench agent`.
pub fn agent_main(args: Vec<std::ffi::OsString>) -> std::process::ExitCode {
    use std::process::ExitCode;
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match strs.as_slice() {
        ["--config", file] => {
            crate::cli::init_tracing();
            agent_from_config(std::path::Path::new(file))
        }
        ["--bench-child", modbus, dir, broker] => modbus
            .parse::<SocketAddr>()
            .map_err(|e| CliError::Usage(format!("--bench-child {modbus}: {e}")))
            .and_then(|m| {
                let (host, port) = crate::cli::parse_broker(broker)?;
                child(m, Some(PathBuf::from(dir)), host, port)
            }),
        ["--help" | "-h"] => {
            println!("{AGENT_USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(CliError::Usage(AGENT_USAGE.into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voltshare-agent: {}", e.message());
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs the meter agent of the config at `path`, alone, until SIGTERM or
/// Ctrl-C.
fn agent_from_config(path: &std::path::Path) -> Result<(), CliError> {
    let cfg = crate::config::load(path).map_err(|e| CliError::Usage(e.to_string()))?;
    let (Some(a), Some(h)) = (cfg.agent.clone(), cfg.household.clone()) else {
        return Err(CliError::Usage(format!(
            "{}: no enabled [meter_agent] (with its [household]) to run",
            path.display()
        )));
    };
    let key = crate::keys::load_or_create(&h.key_file).map_err(|e| {
        CliError::Runtime(anyhow::anyhow!(
            "household key {}: {e}",
            h.key_file.display()
        ))
    })?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        CliError::Runtime(anyhow::anyhow!("creating {}: {e}", cfg.data_dir.display()))
    })?;
    let acfg = crate::gateway::agent_config(&cfg, &a, &h);
    let rt = runtime()?;
    rt.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (latest, _) = tokio::sync::watch::channel(None);
        let agent = tokio::spawn(run_agent(
            acfg,
            key,
            Arc::new(SystemClock),
            stop_rx,
            latest,
            Arc::new(AgentStats::default()),
        ));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| CliError::Runtime(e.into()))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop_tx.send(true);
        match agent.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CliError::Runtime(e.into())),
            Err(e) => Err(CliError::Runtime(e.into())),
        }
    })
}

/// One measured child: peak and sampled RSS (with its anonymous and
/// file-backed parts at the end) and CPU over `secs`.
async fn measure_child(
    mut cmd: tokio::process::Command,
    secs: u64,
) -> Result<serde_json::Value, CliError> {
    let mut child = cmd
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CliError::Runtime(e.into()))?;
    let pid = child
        .id()
        .ok_or_else(|| CliError::Runtime(anyhow::anyhow!("child exited")))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ticks0 = proc_cpu_ticks(pid);
    let sw = Stopwatch::start();
    let mut rss_max = 0u64;
    while sw.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_max = rss_max.max(proc_status_kb(pid, "VmRSS:").unwrap_or(0));
    }
    let ticks1 = proc_cpu_ticks(pid);
    let wall = sw.elapsed().as_secs_f64();
    let hwm = proc_status_kb(pid, "VmHWM:");
    let anon = proc_status_kb(pid, "RssAnon:");
    let file = proc_status_kb(pid, "RssFile:");
    let alive = child.try_wait().ok().flatten().is_none();
    let _ = child.kill().await;
    // Linux reports CPU in USER_HZ ticks, 100 per second everywhere that
    // matters (x86_64, aarch64).
    let cpu_pct = match (ticks0, ticks1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 100.0 / wall * 100.0),
        _ => None,
    };
    Ok(serde_json::json!({
        "devices": 2,
        "poll_hz": 1,
        "window_secs": wall,
        "ran_to_the_end": alive,
        "rss_kb_max": rss_max,
        "rss_kb_hwm": hwm,
        "rss_anon_kb": anon,
        "rss_file_kb": file,
        "cpu_percent_of_one_core": cpu_pct,
        "goal": {"rss_kb_max": 10240, "cpu_percent": 1.0},
    }))
}

/// Runs the benchmark (or, with `--child-modbus`, the measured agent).
pub fn bench_agent(a: BenchAgentArgs) -> Result<(), CliError> {
    let (host, port) = crate::cli::parse_broker(&a.broker)?;
    if let Some(modbus) = a.child_modbus {
        return child(modbus, a.child_dir, host, port);
    }
    let rt = tokio::runtime::Runtime::new().map_err(|e| CliError::Runtime(e.into()))?;
    let out = rt.block_on(async move {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let sim = spawn_devices(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            vec![
                SimUnit::sunspec(INVERTER_UNIT, 40000, &[1, 103]),
                SimUnit::sunspec(METER_UNIT, 40000, &[1, 203]),
            ],
            SimHousehold::from_seed(7),
            Arc::clone(&clock),
        )
        .await
        .map_err(|e| CliError::Runtime(e.into()))?;
        let dir =
            std::env::temp_dir().join(format!("voltshare-bench-agent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| CliError::Runtime(e.into()))?;
        let exe = std::env::current_exe().map_err(|e| CliError::Runtime(e.into()))?;
        // The agent-only binary (built beside this one), then this whole
        // binary running only the agent, for comparison.
        let agent_exe = exe.with_file_name("voltshare-agent");
        let dedicated = if agent_exe.exists() {
            let dir = dir.join("dedicated");
            std::fs::create_dir_all(&dir).map_err(|e| CliError::Runtime(e.into()))?;
            let mut cmd = tokio::process::Command::new(&agent_exe);
            cmd.arg("--bench-child")
                .arg(sim.addr.to_string())
                .arg(&dir)
                .arg(&a.broker);
            Some(measure_child(cmd, a.secs).await?)
        } else {
            None
        };
        let full_binary = {
            let dir = dir.join("full");
            std::fs::create_dir_all(&dir).map_err(|e| CliError::Runtime(e.into()))?;
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.args(["bench", "agent", "--broker", &a.broker, "--child-modbus"])
                .arg(sim.addr.to_string())
                .arg("--child-dir")
                .arg(&dir);
            measure_child(cmd, a.secs).await?
        };
        let _ = std::fs::remove_dir_all(&dir);
        // Read rate: the meter block of model 203 (up to TotWh_SF) through
        // the agent's link and through the bare client, same simulator.
        let link = Link::tcp(sim.addr, Duration::from_secs(1), Arc::clone(&clock));
        let dev = SunSpecDevice::discover(&link, METER_UNIT)
            .await
            .map_err(|e| CliError::Runtime(e.into()))?;
        let block = dev.models.iter().find(|b| b.id == 203).copied();
        let (addr, qty) = block.map(|b| (b.addr, 55)).unwrap_or((40072, 55));
        let d = Duration::from_secs(a.rate_secs);
        let (raw_n, raw) = meter_agent::bench::raw_rate(sim.addr, METER_UNIT, addr, qty, d)
            .await
            .map_err(|e| CliError::Runtime(e.into()))?;
        let (link_n, ours) = meter_agent::bench::link_rate(&link, METER_UNIT, addr, qty, d).await;
        // Also through the full capability read (decode included).
        let sw = Stopwatch::start();
        let mut full = 0u64;
        while sw.elapsed() < d {
            if dev.read_grid().await.is_ok() {
                full += 1;
            }
        }
        let full_rate = full as f64 / sw.elapsed().as_secs_f64();
        Ok::<_, CliError>(serde_json::json!({
            // `voltshare-agent` (null when it was not built beside this
            // binary), and this whole binary running only the agent.
            "agent": dedicated,
            "agent_in_full_binary": full_binary,
            "read_rate": {
                "registers_per_request": qty,
                "raw_tokio_modbus_per_s": raw,
                "raw_requests": raw_n,
                "voltshare_link_per_s": ours,
                "link_requests": link_n,
                "ratio": ours / raw.max(1e-9),
                "read_grid_decoded_per_s": full_rate,
                "goal_ratio": 0.8,
            }
        }))
    })?;
    println!("{out}");
    Ok(())
}

/// The measured process: only the meter agent, on a current-thread runtime.
fn child(
    modbus: SocketAddr,
    dir: Option<PathBuf>,
    host: String,
    port: u16,
) -> Result<(), CliError> {
    let dir = dir.unwrap_or_else(std::env::temp_dir);
    let rt = runtime()?;
    rt.block_on(async move {
        let key = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let engine = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let bad = |e: protocol::IdError| CliError::Runtime(anyhow::anyhow!("{e:?}"));
        let grid = GridId::new(format!("bench{}", std::process::id())).map_err(bad)?;
        let household = HouseholdId::new("h1").map_err(bad)?;
        let meter = MeterId::new("m1").map_err(bad)?;
        let cfg = AgentConfig {
            grid,
            household,
            meter,
            modbus,
            inverter_unit: INVERTER_UNIT,
            meter_unit: METER_UNIT,
            poll_every: Duration::from_secs(1),
            outbox_path: dir.join("outbox.db"),
            outbox_max: 100_000,
            broker_host: host,
            broker_port: port,
            broker_security: Default::default(),
            engine_key: engine.verifying_key(),
            resend_after: Duration::from_secs(60),
        };
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let (latest, _) = tokio::sync::watch::channel(None);
        run_agent(
            cfg,
            key,
            Arc::new(SystemClock),
            rx,
            latest,
            Arc::new(AgentStats::default()),
        )
        .await
        .map_err(|e| CliError::Runtime(e.into()))
    })
}
