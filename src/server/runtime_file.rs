//! The runtime file: where the serving proxy says it listens, so `forge-vram-proxy health`
//! and `status` find it however the address was given (a flag, the environment, a config
//! file, port 0).
//!
//! One small JSON file per user, `{"pid": 1, "listen": "0.0.0.0:7870", "tls": false}`:
//! `$XDG_RUNTIME_DIR/forge-vram-proxy.json` when that variable is set, else
//! `forge-vram-proxy-UID.json` in the temporary directory (`$TMPDIR`, else `/tmp`). The proxy
//! writes it once it listens and removes it when it exits; a file whose process is gone
//! (the proxy was killed) is ignored.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a serving proxy announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listening {
    /// The serving process, so that a file left by a killed proxy is not believed.
    pub pid: u32,
    /// The address it bound (the real port when the configuration said 0).
    pub listen: SocketAddr,
    /// Whether it speaks HTTPS there (`[tls]`).
    pub tls: bool,
}

/// Where this user's proxy announces itself.
pub fn path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        // Already the user's own directory.
        Some(dir) => PathBuf::from(dir).join("forge-vram-proxy.json"),
        None => std::env::temp_dir().join(format!("forge-vram-proxy-{}.json", user_id())),
    }
}

impl Listening {
    /// This process, listening on `listen`.
    pub fn here(listen: SocketAddr, tls: bool) -> Self {
        Self {
            pid: std::process::id(),
            listen,
            tls,
        }
    }

    /// Writes the file at `path` (whole or not at all); it is removed when the returned
    /// guard drops, unless another proxy has announced itself there since.
    pub fn announce(&self, path: PathBuf) -> std::io::Result<Announced> {
        let text = serde_json::to_string(self).map_err(std::io::Error::other)?;
        let partial = path.with_extension(format!("json.{}", self.pid));
        // Left by an earlier process with this pid that died while writing.
        let _ = std::fs::remove_file(&partial);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&partial, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        Ok(Announced {
            path,
            pid: self.pid,
        })
    }

    /// The proxy announced at `path`, when there is one and its process is alive.
    pub fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read(path).ok()?;
        let listening: Self = serde_json::from_slice(&text).ok()?;
        alive(listening.pid).then_some(listening)
    }
}

/// Removes the runtime file when the proxy stops.
#[derive(Debug)]
pub struct Announced {
    path: PathBuf,
    pid: u32,
}

impl Announced {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        let ours = std::fs::read(&self.path)
            .ok()
            .and_then(|text| serde_json::from_slice::<Listening>(&text).ok())
            .is_some_and(|listening| listening.pid == self.pid);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(unix)]
fn user_id() -> String {
    rustix::process::geteuid().as_raw().to_string()
}

#[cfg(not(unix))]
fn user_id() -> String {
    std::env::var("USERNAME").unwrap_or_else(|_| "user".to_owned())
}

/// Whether process `pid` exists (one of another user's counts: it may be the proxy).
#[cfg(unix)]
fn alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

#[cfg(not(unix))]
fn alive(_pid: u32) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fvp-runtime-file-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("forge-vram-proxy.json")
    }

    #[test]
    fn an_announced_address_reads_back_and_goes_with_its_guard() {
        let path = scratch("roundtrip");
        let listening = Listening::here("127.0.0.1:17872".parse().unwrap(), true);
        let announced = listening.announce(path.clone()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!(
                r#"{{"pid":{},"listen":"127.0.0.1:17872","tls":true}}"#,
                std::process::id()
            )
        );
        assert_eq!(Listening::read(&path), Some(listening));
        drop(announced);
        assert!(!path.exists());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_file_left_by_a_dead_process_is_not_believed() {
        let path = scratch("dead");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let text = format!(r#"{{"pid":{pid},"listen":"127.0.0.1:17872","tls":false}}"#);
        std::fs::write(&path, text).unwrap();
        assert_eq!(Listening::read(&path), None);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_guard_leaves_the_file_of_a_proxy_started_after_it() {
        let path = scratch("replaced");
        let first = Listening::here("127.0.0.1:1".parse().unwrap(), false);
        let guard = first.announce(path.clone()).unwrap();
        let later = Listening {
            pid: 1,
            ..Listening::here("127.0.0.1:2".parse().unwrap(), false)
        };
        std::fs::write(&path, serde_json::to_string(&later).unwrap()).unwrap();
        drop(guard);
        assert!(path.exists());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
