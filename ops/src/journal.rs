//! An append-only, rotating journal of JSON lines with an fsync policy (off, always with
//! group commit, or batched every N ms): the worker's order journal and the broker's
//! audit journal both write through it. Each line is one `write` under a lock, so lines
//! never interleave and a killed process loses none it wrote.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

/// When journal lines are forced to disk (`fdatasync`). Every line is written with one
/// `write` before the handler runs whatever the policy, so a killed worker loses nothing;
/// the policy is about power loss and kernel crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Never forced (the kernel writes back when it likes, ~30 s).
    Off,
    /// Each line of a request not marked idempotent (orders, cancels) is synced before
    /// the worker goes on: the start line before the handler runs, the done line before
    /// the reply is sent. Idempotent requests' lines ride along with the next sync.
    Always,
    /// A background thread syncs every N ms when something was written: a power loss can
    /// lose the last N ms of lines.
    Every(Duration),
}

/// Longest batched fsync interval accepted.
pub const MAX_FSYNC_MS: u64 = 10_000;

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(FsyncPolicy::Off),
            "always" => Ok(FsyncPolicy::Always),
            other => other
                .strip_suffix("ms")
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| (1..=MAX_FSYNC_MS).contains(n))
                .map(|n| FsyncPolicy::Every(Duration::from_millis(n)))
                .ok_or_else(|| {
                    format!("{s:?} is not off, always or a batch interval 1ms-{MAX_FSYNC_MS}ms")
                }),
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Off => write!(f, "off"),
            FsyncPolicy::Always => write!(f, "always"),
            FsyncPolicy::Every(d) => write!(f, "{}ms", d.as_millis()),
        }
    }
}

/// Where and how to journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalOptions {
    /// The current file; rotated ones are `PATH.1` (newest) … `PATH.keep` (oldest).
    pub path: PathBuf,
    /// When lines are forced to disk.
    pub fsync: FsyncPolicy,
    /// The current file is rotated before a line would take it past this size.
    pub max_bytes: u64,
    /// Rotated files kept (the oldest beyond this is deleted).
    pub keep: u32,
}

/// Default rotation size: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default number of rotated files kept.
pub const DEFAULT_KEEP: u32 = 10;

impl JournalOptions {
    /// `path` with the defaults: fsync `always`, rotation at 64 MiB, 10 files kept.
    pub fn new(path: impl Into<PathBuf>) -> JournalOptions {
        JournalOptions {
            path: path.into(),
            fsync: FsyncPolicy::Always,
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
        }
    }
}

/// The file being appended to.
struct Current {
    file: Arc<File>,
    size: u64,
    /// Written since the last sync (batched policy).
    dirty: bool,
    /// Lines written since the journal was opened (all files).
    written: u64,
    /// Lines known to be on disk because a rotation synced the file they are in.
    durable: u64,
}

/// An append-only, rotating journal (shareable between threads).
pub struct Journal {
    opts: JournalOptions,
    current: Arc<Mutex<Current>>,
    /// Group commit (`always`): lines covered by the last completed sync. Held while
    /// syncing, so threads arriving meanwhile find their line covered by the next one
    /// instead of each paying its own fsync.
    synced: Mutex<u64>,
    flusher: Option<Flusher>,
}

impl Journal {
    /// Opens (creating or appending to) the journal; starts the flusher if batched.
    pub fn open(opts: JournalOptions) -> std::io::Result<Journal> {
        let file = open_append(&opts.path)?;
        let size = file.metadata()?.len();
        let current = Arc::new(Mutex::new(Current {
            file: Arc::new(file),
            size,
            dirty: false,
            written: 0,
            durable: 0,
        }));
        let flusher = match opts.fsync {
            FsyncPolicy::Every(every) => Some(Flusher::start(current.clone(), every)?),
            _ => None,
        };
        Ok(Journal {
            opts,
            current,
            synced: Mutex::new(0),
            flusher,
        })
    }

    /// The options it was opened with.
    pub fn options(&self) -> &JournalOptions {
        &self.opts
    }

    /// Appends `line` as one JSON line; with `sync` and the `always` policy, returns once
    /// it is on disk (group commit: one fsync covers every line written meanwhile).
    pub fn append(&self, line: &impl Serialize, sync: bool) -> std::io::Result<()> {
        self.append_encoded(serde_json::to_vec(line)?, sync)
    }

    /// [`Journal::append`] of a line already encoded as JSON (no newline in it: the
    /// caller's serde_json output).
    pub fn append_encoded(&self, mut text: Vec<u8>, sync: bool) -> std::io::Result<()> {
        text.push(b'\n');
        let len = text.len() as u64;
        let line_no = {
            let mut cur = self.lock_current();
            if cur.size > 0 && cur.size.saturating_add(len) > self.opts.max_bytes {
                self.rotate(&mut cur)?;
            }
            // One write per line under the lock: lines never interleave.
            (&*cur.file).write_all(&text)?;
            cur.size += len;
            cur.dirty = true;
            cur.written += 1;
            cur.written
        };
        if sync && self.opts.fsync == FsyncPolicy::Always {
            self.sync_through(line_no)?;
        }
        Ok(())
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once line `line_no` is on disk: at once if a sync since covered it, else
    /// after one sync covering every line written so far. Writers keep appending under
    /// the other lock meanwhile.
    fn sync_through(&self, line_no: u64) -> std::io::Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        let (file, upto, durable) = {
            let cur = self.lock_current();
            (cur.file.clone(), cur.written, cur.durable)
        };
        if (*synced).max(durable) >= line_no {
            return Ok(());
        }
        file.sync_data()?;
        *synced = upto;
        Ok(())
    }

    /// `PATH` becomes `PATH.1`, `PATH.1` becomes `PATH.2`, …; `PATH.keep` is deleted.
    fn rotate(&self, cur: &mut Current) -> std::io::Result<()> {
        let path = &self.opts.path;
        if self.opts.fsync != FsyncPolicy::Off {
            cur.file.sync_data()?;
        }
        let keep = self.opts.keep.max(1);
        ignore_missing(std::fs::remove_file(rotated(path, keep)))?;
        for i in (1..keep).rev() {
            ignore_missing(std::fs::rename(rotated(path, i), rotated(path, i + 1)))?;
        }
        std::fs::rename(path, rotated(path, 1))?;
        let file = open_append(path)?;
        if self.opts.fsync != FsyncPolicy::Off {
            // The renames and the new file survive a crash too.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
        }
        let (written, durable) = (cur.written, cur.written);
        *cur = Current {
            file: Arc::new(file),
            size: 0,
            dirty: false,
            written,
            // Every line so far is in a synced file (with fsync off, nobody asks).
            durable,
        };
        tracing::info!(journal = %path.display(), keep, "journal rotated");
        Ok(())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.flusher.take();
        if self.opts.fsync != FsyncPolicy::Off {
            let cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = cur.file.sync_data() {
                tracing::error!(error = %e, "journal: final fsync failed");
            }
        }
    }
}

/// The batched policy's thread: syncs the current file every interval when dirty.
struct Flusher {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    fn start(current: Arc<Mutex<Current>>, every: Duration) -> std::io::Result<Flusher> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("tpx-journal".into())
            .spawn(move || {
                // Disconnected (the journal dropped) ends the loop; a timeout is a tick.
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(every)
                {
                    let file = {
                        let mut cur = current.lock().unwrap_or_else(|p| p.into_inner());
                        if !std::mem::take(&mut cur.dirty) {
                            continue;
                        }
                        cur.file.clone()
                    };
                    if let Err(e) = file.sync_data() {
                        tracing::error!(error = %e, "journal: batched fsync failed");
                    }
                }
            })?;
        Ok(Flusher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `PATH.n`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn ignore_missing(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
