//! Deleting directory trees off the request path: a tree is renamed into a trash directory
//! (same filesystem: one atomic metadata operation) and removed by a background thread.
//! Removing even a small tree costs a few milliseconds on a journaling filesystem, which no
//! caller needs to wait for once the tree is out of its place (containerd too deletes snapshot
//! directories after the call, in its GC). Used for removed snapshots and deleted task bundles.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{IoContext, Result};

/// Distinguishes trash entries of one process.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// A trash directory; cheap to clone.
#[derive(Debug, Clone)]
pub struct Trash {
    dir: PathBuf,
    /// What the background thread is called (`snapshot-rm`, `bundle-rm`).
    thread: &'static str,
}

impl Trash {
    /// Creates `dir` if needed and starts removing what a previous run left in it.
    pub fn open(dir: PathBuf, thread: &'static str) -> Result<Trash> {
        fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let leftovers = fs::read_dir(&dir)
            .ctx(|| format!("read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        let trash = Trash { dir, thread };
        trash.remove_in_background(leftovers);
        Ok(trash)
    }

    /// Takes `path` out of its place at once and deletes it in the background; falls back to
    /// deleting it in place if the rename fails. A missing `path` is not an error.
    pub fn discard(&self, path: &Path) {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}-{}-{seq}",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        );
        let to = self.dir.join(name);
        match fs::rename(path, &to) {
            Ok(()) => self.remove_in_background(vec![to]),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!(dir = %path.display(), error = %e, "cannot move a directory to the trash");
                if let Err(e) = fs::remove_dir_all(path) {
                    tracing::warn!(dir = %path.display(), error = %e, "cannot remove directory");
                }
            }
        }
    }

    /// Deletes `paths` on a background thread (inline if no thread can be made).
    fn remove_in_background(&self, paths: Vec<PathBuf>) {
        if paths.is_empty() {
            return;
        }
        let work = move || {
            for p in paths {
                if let Err(e) = fs::remove_dir_all(&p) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(dir = %p.display(), error = %e, "cannot remove directory");
                    }
                }
            }
        };
        let shared = Arc::new(Mutex::new(Some(work)));
        let theirs = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(self.thread.into())
            .spawn(move || {
                if let Some(w) = theirs.lock().ok().and_then(|mut g| g.take()) {
                    w()
                }
            });
        if spawned.is_err() {
            if let Some(w) = shared.lock().ok().and_then(|mut g| g.take()) {
                w()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_empty(dir: &Path) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fs::read_dir(dir).unwrap().next().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} not emptied",
                dir.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn discarded_trees_leave_their_place_at_once_and_the_trash_empties() {
        let t = tempfile::tempdir().unwrap();
        let trash = Trash::open(t.path().join("trash"), "test-rm").unwrap();
        let victim = t.path().join("bundle");
        fs::create_dir_all(victim.join("rootfs/etc")).unwrap();
        fs::write(victim.join("config.json"), b"{}").unwrap();
        trash.discard(&victim);
        assert!(!victim.exists());
        // The same place can be used again right away.
        fs::create_dir_all(&victim).unwrap();
        wait_empty(&t.path().join("trash"));
        assert!(victim.exists());
        // Missing paths are fine.
        trash.discard(&t.path().join("nothing-here"));
    }
}
