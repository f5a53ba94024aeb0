//! The replay spool's directory and its writer: where evidence waits, durably, while the stream
//! cannot take it (`spec/sts.md §13`, `spec/audit-streams-storage.md §5`).
//!
//! Layout of `AUDIT_REPLAY_DIR` (mode 0700):
//! - `pending-<pid>-<unix ns>.ndjson` (mode 0600): one frame per `\n`-terminated line, append
//!   only, never rewritten;
//! - `pending-<pid>-<unix ns>.ndjson.offset`: how many bytes of that file are already
//!   published (see [`crate::replay`]); absent means none;
//! - `.probe-<pid>-<ns>`: a writability probe, removed at once.
//!
//! Ownership is an exclusive `flock` on the data file. A writer locks the file it creates and
//! keeps the lock for as long as it may append; a replayer only reads a file whose lock it
//! holds. So no file is ever replayed while someone can still append to it, whether that
//! someone is another process sharing the directory, a second publisher in this process (STS
//! and Gateway in `caracal serve all`), or this publisher's own writer. `flock` locks belong to
//! the open file, not the process, so they separate publishers inside one process too, and the
//! kernel releases them when a process dies, which hands a crashed writer's files to the next
//! replayer without any staleness guess.

use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) const FILE_PREFIX: &str = "pending-";
pub(crate) const FILE_SUFFIX: &str = ".ndjson";
pub(crate) const OFFSET_SUFFIX: &str = ".offset";
pub(crate) const OFFSET_TEMP_SUFFIX: &str = ".offset.tmp";
const PROBE_PREFIX: &str = ".probe-";

/// A probe left behind by a crash is removed once it is this old: younger ones may belong to a
/// live publisher that is about to remove them itself.
const STALE_PROBE_AGE: Duration = Duration::from_secs(60);

/// How many fresh names a writer tries before giving up on creating a file. A clash needs
/// another writer with the same pid and the same nanosecond, or a lost race with a replayer.
const CREATE_ATTEMPTS: usize = 8;

/// Nanoseconds since the epoch, strictly increasing within this process, so two files created
/// in the same nanosecond by two publishers still get different names.
fn unique_nanos() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or_default();
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last.saturating_add(1)))
        })
        .unwrap_or_else(|last| last);
    now.max(previous.saturating_add(1))
}

/// Whether `name` is a replay data file.
pub(crate) fn is_data_file(name: &str) -> bool {
    name.starts_with(FILE_PREFIX) && name.ends_with(FILE_SUFFIX)
}

/// Creation time of a data file from its name (`pending-<pid>-<ns>.ndjson`), the replay order.
pub(crate) fn created_nanos(name: &str) -> Option<u64> {
    let stem = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    let (_pid, nanos) = stem.split_once('-')?;
    nanos.parse().ok()
}

/// Takes the exclusive lock without waiting: `Ok(false)` when someone else holds it.
pub(crate) fn try_lock(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Whether `path` still names the inode `file` has open. A lock taken on a file that was
/// removed (or replaced) meanwhile protects nothing that anyone else will look at.
pub(crate) fn still_named(file: &File, path: &Path) -> io::Result<bool> {
    let held = file.metadata()?;
    match fs::metadata(path) {
        Ok(named) => Ok(named.dev() == held.dev() && named.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes entries created, renamed or removed in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What `/metrics` reports about the files on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SpoolStats {
    pub files: u64,
    pub bytes: u64,
    pub oldest_age_seconds: u64,
}

/// The file this writer appends to, locked for as long as it is held here.
struct OpenFile {
    path: PathBuf,
    file: File,
}

/// The spool directory and this publisher's current file.
pub(crate) struct Spool {
    dir: PathBuf,
    current: Mutex<Option<OpenFile>>,
}

impl Spool {
    /// A spool over `dir`; see [`Spool::probe`] for whether it is usable.
    pub fn new(dir: PathBuf) -> Spool {
        Spool {
            dir,
            current: Mutex::new(None),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn current(&self) -> MutexGuard<'_, Option<OpenFile>> {
        // A panic while the lock was held can at worst have left a partial line, which replay
        // skips; the file handle itself stays valid, so carrying on is safe.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates the directory (0700) if needed and proves a file can be created, written,
    /// synced and removed in it: the check behind `audit_replay_unavailable`.
    pub fn probe(&self) -> io::Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let path = self.dir.join(format!(
            "{PROBE_PREFIX}{}-{}",
            std::process::id(),
            unique_nanos()
        ));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| {
                file.write_all(b"probe\n")?;
                file.sync_data()
            });
        let removed = fs::remove_file(&path);
        written?;
        removed
    }

    /// Appends whole lines to this writer's file and syncs them before returning, so an `Ok`
    /// means the events survive a crash. All or nothing: on failure the file is cut back to its
    /// previous length (no half line for replay to trip on) and let go, and the next append
    /// starts a fresh file.
    pub fn append(&self, lines: &[u8]) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut current = self.current();
        if current.is_none() {
            *current = Some(self.create_file()?);
        }
        let Some(open) = current.as_mut() else {
            return Err(io::Error::other("spool file vanished"));
        };
        let before = open.file.metadata()?.len();
        let written = open
            .file
            .write_all(lines)
            .and_then(|()| open.file.sync_data());
        if let Err(e) = written {
            if let Err(cut) = open.file.set_len(before) {
                tracing::warn!(error = %cut, path = %open.path.display(),
                    "could not cut a failed spool append back; replay will skip the partial line");
            }
            *current = None;
            return Err(e);
        }
        Ok(())
    }

    /// Lets go of the current file (closing it releases its lock) so a replay pass can claim
    /// it; later appends start a new one. Returns whether there was one.
    pub fn seal(&self) -> bool {
        self.current().take().is_some()
    }

    /// Whether this writer holds a file (with events replay has not seen yet).
    pub fn has_open_file(&self) -> bool {
        self.current().is_some()
    }

    /// A new `pending-<pid>-<ns>.ndjson`, created exclusively and locked.
    ///
    /// The file is visible between its creation and the lock, and a replayer may claim it
    /// there, find it empty and remove it. So after locking, the writer checks that the name
    /// still points at its inode and starts over with a fresh name if not: evidence is only
    /// ever written into a file that is both locked and reachable.
    fn create_file(&self) -> io::Result<OpenFile> {
        let mut last_error = None;
        for _ in 0..CREATE_ATTEMPTS {
            let path = self.dir.join(format!(
                "{FILE_PREFIX}{}-{}{FILE_SUFFIX}",
                std::process::id(),
                unique_nanos()
            ));
            let file = match OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    last_error = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if try_lock(&file)? && still_named(&file, &path)? {
                sync_dir(&self.dir)?;
                return Ok(OpenFile { path, file });
            }
            last_error = Some(io::Error::other("a replayer claimed the new spool file"));
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no spool file could be created")))
    }

    /// Counts the data files on disk. Cheap (one directory read and a `stat` per file), and
    /// always true, including files of other processes.
    pub fn stats(&self) -> io::Result<SpoolStats> {
        let mut stats = SpoolStats::default();
        let now = SystemTime::now();
        let mut oldest: Option<SystemTime> = None;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !is_data_file(name) {
                continue;
            }
            let Ok(metadata) = entry.metadata() else {
                continue; // replayed and removed since the directory was read
            };
            stats.files += 1;
            stats.bytes += metadata.len();
            // The name says when the first event of the file was spooled; the mtime only when
            // the last one was, which would hide how long the first has been waiting.
            let created = created_nanos(name)
                .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns))
                .or_else(|| metadata.modified().ok());
            if let Some(created) = created {
                oldest = Some(oldest.map_or(created, |o| o.min(created)));
            }
        }
        stats.oldest_age_seconds = oldest
            .and_then(|t| now.duration_since(t).ok())
            .map_or(0, |age| age.as_secs());
        Ok(stats)
    }

    /// Whether any data file exists (this writer's or anyone's).
    pub fn has_data_files(&self) -> io::Result<bool> {
        for entry in fs::read_dir(&self.dir)? {
            if entry?.file_name().to_str().is_some_and(is_data_file) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes what crashed processes left beside the data files: probes, and offset sidecars
    /// (or their temporaries) whose data file is gone. A sidecar is removed only after its
    /// data file (see [`crate::replay`]), so an orphan is always finished business.
    pub fn remove_leftovers(&self) -> io::Result<()> {
        let now = SystemTime::now();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let orphan = [OFFSET_SUFFIX, OFFSET_TEMP_SUFFIX]
                .iter()
                .filter_map(|suffix| name.strip_suffix(suffix))
                .find(|data| is_data_file(data))
                .is_some_and(|data| !self.dir.join(data).exists());
            let stale_probe = name.starts_with(PROBE_PREFIX)
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|modified| now.duration_since(modified).ok())
                    .is_some_and(|age| age > STALE_PROBE_AGE);
            if orphan || stale_probe {
                match fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_order_by_creation_time() {
        assert_eq!(
            created_nanos("pending-7-1700000000000000001.ndjson"),
            Some(1_700_000_000_000_000_001)
        );
        assert_eq!(created_nanos("pending-x.ndjson"), None);
        assert!(is_data_file("pending-1-2.ndjson"));
        assert!(!is_data_file("pending-1-2.ndjson.offset"));
        assert!(!is_data_file(".probe-1-2"));
    }

    #[test]
    fn nanos_never_repeat() {
        let a = unique_nanos();
        let b = unique_nanos();
        assert!(b > a);
    }
}
