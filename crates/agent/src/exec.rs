//! A command run as if in a pod (wharf has no containers: it is a host
//! command): the pod's service variables and its own `env`, an
//! `/etc/resolv.conf` naming the cluster DNS in a private mount namespace,
//! the container's working directory, an unprivileged user, and a
//! terminal when asked for one.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use tokio::process::Command;

use crate::probe::ProbeUser;

/// Everything a command's process gets besides its arguments.
pub struct PodView {
    pub env: Vec<(String, String)>,
    pub resolv_conf: String,
    pub workdir: PathBuf,
    /// Drop to this account (when wharf runs as root).
    pub user: Option<ProbeUser>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("no command")]
    NoCommand,
    #[error("preparing the pod's view: {0}")]
    Setup(std::io::Error),
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
}

/// A started command: its process, and its terminal if it has one.
pub struct Started {
    pub child: tokio::process::Child,
    /// The terminal's controlling side, when the command has a terminal.
    pub terminal: Option<OwnedFd>,
    /// Holds the resolv.conf file until the command has its mount.
    _resolv: Option<tempfile::NamedTempFile>,
}

fn c_string(s: &str) -> Result<CString, ExecError> {
    CString::new(s).map_err(|e| ExecError::Setup(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))
}

/// A terminal's size as the client reports it; 0 × 0 when unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// Starts `command` in `view`; `tty` gives it a terminal of its own, of
/// that size, otherwise its stdin, stdout and stderr are pipes.
pub fn start(command: &[String], view: &PodView, tty: Option<TerminalSize>) -> Result<Started, ExecError> {
    let (program, args) = command.split_first().ok_or(ExecError::NoCommand)?;
    let root = nix::unistd::Uid::effective().is_root();
    // Only root can give the command its own mount namespace; otherwise it
    // sees the host's resolv.conf (and runs as wharf's own user).
    let resolv = if root {
        let mut file = tempfile::Builder::new().prefix("wharf-resolv-").tempfile().map_err(ExecError::Setup)?;
        file.write_all(view.resolv_conf.as_bytes()).map_err(ExecError::Setup)?;
        std::fs::set_permissions(file.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644)).map_err(ExecError::Setup)?;
        Some(file)
    } else {
        None
    };
    let mount_source = resolv.as_ref().map(|f| c_string(&f.path().to_string_lossy())).transpose()?;
    let (slash, target) = (c_string("/")?, c_string("/etc/resolv.conf")?);
    let user = view.user.filter(|_| root);

    let mut cmd = Command::new(program);
    cmd.args(args).env_clear().envs(view.env.iter().cloned()).current_dir(&view.workdir).kill_on_drop(true);
    let terminal = if let Some(size) = tty {
        let size = nix::pty::Winsize { ws_row: size.height, ws_col: size.width, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&size), None).map_err(|e| ExecError::Setup(e.into()))?;
        let child_end = pty.slave;
        let dup = |fd: &OwnedFd| fd.try_clone().map(std::process::Stdio::from).map_err(ExecError::Setup);
        cmd.stdin(dup(&child_end)?).stdout(dup(&child_end)?).stderr(dup(&child_end)?);
        Some(pty.master)
    } else {
        cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        None
    };
    // SAFETY: between fork and exec only async-signal-safe system calls
    // run, on values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if tty.is_some() {
                // Its own session, with the terminal as controlling terminal.
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(source) = &mount_source {
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(std::ptr::null(), slash.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null())
                        != 0
                    || libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(user) = user {
                if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(user.gid) != 0 || libc::setuid(user.uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| ExecError::Spawn { program: program.clone(), source })?;
    Ok(Started { child, terminal, _resolv: resolv })
}

/// Sets a terminal's size.
pub fn resize(terminal: &OwnedFd, size: TerminalSize) {
    let size = libc::winsize { ws_row: size.height, ws_col: size.width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer given.
    unsafe {
        libc::ioctl(terminal.as_raw_fd(), libc::TIOCSWINSZ, &size);
    }
}
