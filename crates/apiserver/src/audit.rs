//! The audit trail: one JSON line per write and per refused request in
//! `<data-dir>/audit.log` (who, what, the answer), rotated by size. The
//! line is written before the answer leaves, so an acknowledged write is
//! in the log even after `kill -9`. Credentials are never written.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::json;
use wharf_auth::{Attributes, User};

/// Rotated files kept beside the live one: `audit.log.1` .. `.3`.
const BACKUPS: u32 = 3;

struct Open {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

#[derive(Default)]
pub struct AuditLog {
    file: Option<Mutex<Open>>,
}

/// One audited request.
pub struct Entry<'a> {
    /// None when the caller could not be authenticated.
    pub user: Option<&'a User>,
    pub impersonator: Option<&'a User>,
    pub attributes: &'a Attributes,
    pub code: u16,
    pub source: Option<std::net::SocketAddr>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

impl Open {
    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        for n in (1..BACKUPS).rev() {
            let _ = fs::rename(numbered(n), numbered(n + 1));
        }
        fs::rename(&self.path, numbered(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }

    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

impl AuditLog {
    /// Appends to `path`, rotating once it would pass `max_bytes`.
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Self> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(Self { file: Some(Mutex::new(Open { path: path.into(), file, size, max_bytes })) })
    }

    pub fn record(&self, entry: &Entry<'_>) {
        let Some(file) = &self.file else { return };
        let mut line = json!({
            "time": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            "user": entry.user.map_or("", |u| u.name.as_str()),
            "groups": entry.user.map(|u| u.groups.clone()).unwrap_or_default(),
            "verb": entry.attributes.verb(),
            "code": entry.code,
        });
        match entry.attributes {
            Attributes::Resource(r) => {
                line["apiGroup"] = json!(r.group);
                line["resource"] = json!(r.resource_path());
                line["namespace"] = json!(r.namespace);
                line["name"] = json!(r.name);
            }
            Attributes::NonResource { path, .. } => line["path"] = json!(path),
        }
        if let Some(by) = entry.impersonator {
            line["impersonatedBy"] = json!(by.name);
        }
        if let Some(addr) = entry.source {
            line["sourceIP"] = json!(addr.ip().to_string());
        }
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        let mut open = file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = open.append(&bytes) {
            tracing::warn!(path = %open.path.display(), error = %e, "cannot write the audit log");
        }
    }
}

/// Whether a verb changes something (and so is always audited).
pub fn is_write(verb: &str) -> bool {
    !matches!(verb, "get" | "list" | "watch")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_auth::ResourceAttributes;

    #[test]
    fn lines_name_the_caller_and_rotate_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, 400).unwrap();
        let alice = User::authenticated("alice", "", ["dev".to_string()]);
        let attrs = Attributes::Resource(ResourceAttributes::new("create", "", "services", "default", "web"));
        for _ in 0..10 {
            log.record(&Entry { user: Some(&alice), impersonator: None, attributes: &attrs, code: 201, source: None });
        }
        let text = fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!((first["user"].as_str(), first["verb"].as_str(), first["code"].as_u64()), (Some("alice"), Some("create"), Some(201)));
        assert_eq!(first["groups"], json!(["dev", "system:authenticated"]));
        assert!(fs::metadata(&path).unwrap().len() <= 400);
        assert!(dir.path().join("audit.log.1").exists() && dir.path().join("audit.log.3").exists());
        assert!(!dir.path().join("audit.log.4").exists(), "at most three old files");
    }
}
