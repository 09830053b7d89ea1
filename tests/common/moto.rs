//! A real moto_server for DynamoDB tests, shared by the test binaries through
//! `#[path = ".."] mod moto;`: `scripts/moto_single_thread.py` (one request at a time, so
//! conditional writes are atomic as on real DynamoDB) on a free port, killed by PID when dropped.
//!
//! It runs with the venv made by `scripts/install-moto.sh` (or `$SSE_MOTO_PYTHON`); tests fail,
//! never skip, when it is missing.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long moto may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A running moto_server (single-threaded launcher), killed by PID when dropped.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// The python of moto's venv: `$SSE_MOTO_PYTHON`, else where `scripts/install-moto.sh`
    /// puts it (`${SSE_CACHE_DIR:-$HOME/.cache/server_sent_events}/moto-venv`).
    pub fn python() -> PathBuf {
        if let Some(python) = std::env::var_os("SSE_MOTO_PYTHON") {
            return PathBuf::from(python);
        }
        let cache = match std::env::var_os("SSE_CACHE_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let home = std::env::var_os("HOME").expect("HOME is not set");
                Path::new(&home).join(".cache/server_sent_events")
            }
        };
        cache.join("moto-venv/bin/python")
    }

    /// Starts moto on a free port and waits until it accepts connections.
    pub fn start() -> Moto {
        let python = Self::python();
        assert!(
            python.exists(),
            "moto's python not found at {} (set SSE_MOTO_PYTHON or run scripts/install-moto.sh)",
            python.display()
        );
        let launcher = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/moto_single_thread.py");
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            listener.local_addr().expect("local addr").port()
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("moto.log");
        let log_file = std::fs::File::create(&log).expect("moto log file");
        let child = Command::new(&python)
            .arg(&launcher)
            .arg("127.0.0.1")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} {}: {e}",
                    python.display(),
                    launcher.display()
                )
            });
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = moto.child.try_wait().expect("try_wait") {
                panic!("moto exited early ({status}); log:\n{}", moto.log_text());
            }
            if TcpStream::connect_timeout(
                &([127, 0, 0, 1], port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return moto;
            }
            assert!(
                Instant::now() < deadline,
                "moto did not listen on {port} within {START_LIMIT:?}; log:\n{}",
                moto.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What moto wrote so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process by its PID.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Kills the process by PID and reaps it (the store goes down; idempotent).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A table name no other test uses.
pub fn unique_table() -> String {
    format!("report_status_{}", uuid::Uuid::new_v4().simple())
}
