//! Small cgroupfs file helpers whose errors always name the file (and the value written).

use super::{CgroupError, RMDIR_BACKOFF, RMDIR_RETRIES};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

/// Write `value` to `dir/file` without creating or truncating it (cgroupfs files exist or not).
pub(crate) fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    let err = |source: std::io::Error| CgroupError::Write {
        path: path.clone(),
        value: value.to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(err)?;
    f.write_all(value.as_bytes()).map_err(err)?;
    tracing::trace!(path = %path.display(), value, "cgroup write");
    Ok(())
}

/// Like [`write`] but returns the raw io::Error kind to let callers react to ENOENT/EINVAL.
pub(crate) fn write_raw(dir: &Path, file: &str, value: &str) -> Result<(), std::io::Error> {
    let path = dir.join(file);
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

pub(crate) fn write_error(dir: &Path, file: &str, value: &str, e: std::io::Error) -> CgroupError {
    CgroupError::Write {
        path: dir.join(file),
        value: value.to_string(),
        source: e,
    }
}

pub(crate) fn read_path(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
        op: "reading",
        path: path.to_path_buf(),
        source,
    })
}

/// Read `dir/file` with surrounding whitespace removed.
pub(crate) fn read(dir: &Path, file: &str) -> Result<String, CgroupError> {
    Ok(read_path(&dir.join(file))?.trim().to_string())
}

/// Read `dir/file`; `None` if it does not exist.
pub(crate) fn read_opt(dir: &Path, file: &str) -> Result<Option<String>, CgroupError> {
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Io {
            op: "reading",
            path,
            source,
        }),
    }
}

/// Parse a single unsigned value; "max" (v2) is `u64::MAX`, as runc reports it.
pub(crate) fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    let t = text.trim();
    if t == "max" {
        return Ok(u64::MAX);
    }
    t.parse::<u64>()
        .or_else(|_| {
            // v1 reports some values (e.g. a -1 written limit) as negative numbers.
            t.parse::<i64>().map(|v| if v < 0 { 0 } else { v as u64 })
        })
        .map_err(|e| CgroupError::Parse {
            path: path.to_path_buf(),
            msg: format!("{t:?} is not a number: {e}"),
        })
}

pub(crate) fn read_u64(dir: &Path, file: &str) -> Result<u64, CgroupError> {
    let s = read(dir, file)?;
    parse_u64(&dir.join(file), &s)
}

/// Read a number; 0 when the file does not exist.
pub(crate) fn read_u64_or_zero(dir: &Path, file: &str) -> Result<u64, CgroupError> {
    match read_opt(dir, file)? {
        Some(s) => parse_u64(&dir.join(file), &s),
        None => Ok(0),
    }
}

pub(crate) fn exists(dir: &Path, file: &str) -> bool {
    dir.join(file).exists()
}

pub(crate) fn mkdir_all(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(|source| CgroupError::Io {
        op: "creating directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Append every pid of `dir/cgroup.procs` and of all sub-cgroups.
pub(crate) fn collect_procs(dir: &Path, out: &mut Vec<i32>) -> Result<(), CgroupError> {
    let procs = match read_opt(dir, "cgroup.procs")? {
        Some(s) => s,
        // Directory removed under us: nothing in it.
        None if !dir.exists() => return Ok(()),
        None => {
            return Err(CgroupError::Io {
                op: "reading",
                path: dir.join("cgroup.procs"),
                source: std::io::Error::from(ErrorKind::NotFound),
            })
        }
    };
    for line in procs.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let pid = line.parse::<i32>().map_err(|e| CgroupError::Parse {
            path: dir.join("cgroup.procs"),
            msg: format!("{line:?}: {e}"),
        })?;
        out.push(pid);
    }
    for sub in subdirs(dir)? {
        collect_procs(&sub, out)?;
    }
    Ok(())
}

/// Child directories (sub-cgroups) of `dir`; empty if `dir` is gone.
pub(crate) fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Io {
                op: "listing",
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| CgroupError::Io {
            op: "listing",
            path: dir.to_path_buf(),
            source,
        })?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// rmdir `dir` after its sub-cgroups (deepest first). ENOENT is success; EBUSY is retried a
/// bounded number of times with a short, growing sleep.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for sub in subdirs(dir)? {
        remove_tree(&sub)?;
    }
    let mut delay = RMDIR_BACKOFF;
    let mut attempt = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < RMDIR_RETRIES => {
                attempt += 1;
                tracing::debug!(dir = %dir.display(), attempt, "cgroup busy, retrying rmdir");
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_millis(200));
            }
            Err(source) => {
                return Err(CgroupError::Io {
                    op: "removing",
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}
