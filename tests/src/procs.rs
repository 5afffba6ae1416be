//! Real processes: the `voltshare` binary and private Mosquitto brokers.
//!
//! Every child is killed with SIGKILL when its handle is dropped, so a
//! failing test leaves nothing running; the fault tests kill on purpose with
//! [`Proc::kill9`] (SIGKILL: no destructor, no flush, as a power loss).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn newest_source(dir: &Path, newest: &mut SystemTime) {
    if dir.is_file() {
        if let Ok(m) = std::fs::metadata(dir).and_then(|m| m.modified())
            && m > *newest
        {
            *newest = m;
        }
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            newest_source(&p, newest);
        } else if let Ok(m) = e.metadata().and_then(|m| m.modified())
            && m > *newest
        {
            *newest = m;
        }
    }
}

/// The real `voltshare` binary: `target/debug/voltshare` next to this test
/// executable. It is built with `cargo build -p controller --bin voltshare`
/// when it is missing or older than any source file of the crates it is
/// made of. Panics (the test fails loudly) when it cannot be had.
pub fn voltshare_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/debug/deps/<test> -> target/debug/voltshare
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
        let bin = profile_dir.join("voltshare");
        let root = workspace_root();
        let mut newest = SystemTime::UNIX_EPOCH;
        for c in ["protocol", "meter-agent", "clearing", "web", "controller"] {
            newest_source(&root.join(c).join("src"), &mut newest);
            newest_source(&root.join(c).join("migrations"), &mut newest);
        }
        newest_source(&root.join("Cargo.lock"), &mut newest);
        let fresh = std::fs::metadata(&bin).and_then(|m| m.modified()).is_ok_and(|m| m >= newest);
        if !fresh {
            eprintln!("building the voltshare binary (missing or stale): cargo build -p controller --bin voltshare");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let target = profile_dir.parent().expect("target dir").to_path_buf();
            let status = Command::new(cargo)
                .args(["build", "-p", "controller", "--bin", "voltshare"])
                .env("CARGO_TARGET_DIR", &target)
                .current_dir(&root)
                .status()
                .expect("running cargo build for the voltshare binary");
            assert!(status.success(), "cargo build -p controller --bin voltshare failed");
        }
        assert!(bin.is_file(), "the voltshare binary is not at {}", bin.display());
        bin
    })
    .clone()
}

/// A child process that is SIGKILLed when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program args…` with stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        log: &Path,
        envs: &[(&str, &str)],
    ) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({}): {e}", program.display()));
        Proc {
            child: Some(child),
            name: name.to_owned(),
            log: log.to_path_buf(),
        }
    }

    /// `voltshare run --config FILE`.
    pub fn voltshare_run(name: &str, config: &Path, log: &Path) -> Proc {
        let bin = voltshare_bin();
        let config = config.to_str().expect("utf-8 path");
        Proc::spawn(
            name,
            &bin,
            &["run", "--config", config],
            log,
            &[("RUST_LOG", "warn,clearing=info,meter_agent=info")],
        )
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL and reap: the process gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let watch = protocol::Stopwatch::start();
            while watch.elapsed() < grace {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The last `n` bytes of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let from = text.len().saturating_sub(n);
        String::from_utf8_lossy(&text[from..]).into_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, timeout: Duration) -> bool {
    let watch = protocol::Stopwatch::start();
    while watch.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A private Mosquitto on a loopback port, for outages: kill it and start it
/// again on the same port. No persistence, so a restart loses every queued
/// message and session: only the senders' outboxes bring them back.
#[derive(Debug)]
pub struct PrivateBroker {
    pub port: u16,
    conf: PathBuf,
    dir: PathBuf,
    proc: Option<Proc>,
    pub restarts: u32,
}

impl PrivateBroker {
    /// Starts `mosquitto -c CONF` listening on 127.0.0.1 only. Fails loudly
    /// when mosquitto is not installed.
    pub fn start(dir: &Path) -> PrivateBroker {
        let port = crate::util::free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n"),
        )
        .expect("mosquitto config");
        let mut b = PrivateBroker {
            port,
            conf,
            dir: dir.to_path_buf(),
            proc: None,
            restarts: 0,
        };
        b.up();
        b
    }

    /// Starts the broker (after [`PrivateBroker::down`]).
    pub fn up(&mut self) {
        let mosquitto = [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("mosquitto is not installed (scripts/setup.d/10-mosquitto.sh installs it)");
        let conf = self.conf.to_str().expect("utf-8 path").to_owned();
        let log = self.dir.join("mosquitto.log");
        self.proc = Some(Proc::spawn(
            "mosquitto",
            &mosquitto,
            &["-c", &conf],
            &log,
            &[],
        ));
        assert!(
            wait_listening(self.port, Duration::from_secs(10)),
            "private mosquitto did not listen on {}",
            self.port
        );
    }

    /// Kills the broker with SIGKILL.
    pub fn down(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
        self.restarts += 1;
    }
}
