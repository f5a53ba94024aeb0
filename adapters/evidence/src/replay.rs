//! Reading replay files back, oldest first, without losing or repeating evidence.
//!
//! Crash safety rests on three rules:
//! - A data file is append-only and never rewritten. Progress lives beside it in
//!   `<file>.offset`: the byte offset of the first line not yet published. That sidecar is
//!   written to a temporary, synced, and renamed over the old one (then the directory is
//!   synced), so it is always either the old or the new offset, never a torn one.
//! - The offset only moves forward after the lines before it were published (or were found
//!   unreadable and counted as dropped). A publication failure records exactly the lines that
//!   went out, so the next attempt, in this process or the next, starts at the first line
//!   that did not: the published prefix is never sent again, and nothing after it is skipped.
//! - A finished file is removed before its sidecar. A crash between the two leaves an orphan
//!   sidecar, which is removed later; the reverse order could leave a file whose progress is
//!   forgotten, and its whole content would be published twice.
//!
//! The one window left is a crash after an XADD succeeded and before the offset recording it
//! was renamed into place. The offset is recorded after every chunk of lines, so at most one
//! chunk is published again; the Audit service deduplicates on (`id`, `occurred_at`). A file
//! is only read while its lock is held (see [`crate::spool`]), so a writer never appends
//! behind a replayer's back and two replayers never read the same file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::spool::{
    created_nanos, is_data_file, still_named, sync_dir, try_lock, OFFSET_SUFFIX, OFFSET_TEMP_SUFFIX,
};

/// The longest line replay accepts. Frames are a few kilobytes and request bodies are capped
/// far below this, so only damage is longer; it is skipped (and counted as dropped) rather than
/// read into memory whole. Upstream's drain stops at 1 MiB; a larger bound here means no frame
/// this publisher could have spooled is refused on the way back.
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// How much of an over-long line is read at a time while skipping it.
const SKIP_CHUNK_BYTES: u64 = 64 * 1024;

/// The data files in `dir`, oldest first: by the creation time in their name, then by name.
/// (Plain name order would sort `pending-10-…` before `pending-9-…` whatever their age.)
pub(crate) fn list_data_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str() {
            if is_data_file(name) {
                files.push((created_nanos(name).unwrap_or(u64::MAX), name.to_string()));
            }
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(_, name)| dir.join(name)).collect())
}

/// One line read from a replay file.
#[derive(Debug)]
pub(crate) struct Line {
    /// The line without its `\n`, or `None` when it exceeded [`MAX_LINE_BYTES`].
    pub text: Option<Vec<u8>>,
    /// The file offset just past it: where replay resumes once this line is settled.
    pub end: u64,
}

/// What claiming a file found.
pub(crate) enum Claim {
    /// Locked and ours to replay.
    Claimed(Cursor),
    /// Someone holds it: a live writer, or another replayer.
    Busy,
    /// Removed (finished by another replayer) since the directory was listed.
    Gone,
}

/// A claimed replay file: the lock is held for as long as the cursor lives.
pub(crate) struct Cursor {
    path: PathBuf,
    reader: BufReader<File>,
    position: u64,
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Cursor {
    /// Locks `path` and positions the cursor at its recorded offset.
    pub fn claim(path: PathBuf) -> io::Result<Claim> {
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Claim::Gone),
            Err(e) => return Err(e),
        };
        if !try_lock(&file)? {
            return Ok(Claim::Busy);
        }
        // Between our open and our lock another replayer may have finished the file and
        // removed it; the inode we hold is then no longer the one anyone would replay.
        if !still_named(&file, &path)? {
            return Ok(Claim::Gone);
        }
        let len = file.metadata()?.len();
        let offset = Self::read_offset(&path)?.min(len);
        let mut reader = BufReader::new(file);
        reader.seek(SeekFrom::Start(offset))?;
        Ok(Claim::Claimed(Cursor {
            path,
            reader,
            position: offset,
        }))
    }

    /// The recorded offset; 0 when none was recorded. An unreadable sidecar cannot come from
    /// the atomic rename; if one appears anyway, starting over only repeats evidence.
    fn read_offset(path: &Path) -> io::Result<u64> {
        match fs::read_to_string(sidecar(path, OFFSET_SUFFIX)) {
            Ok(text) => Ok(text.trim().parse().unwrap_or_else(|_| {
                tracing::warn!(path = %path.display(), "unreadable replay offset; replaying the file from its start");
                0
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads up to `max` lines; an empty result means the end of the file.
    pub fn read_lines(&mut self, max: usize) -> io::Result<Vec<Line>> {
        let mut lines = Vec::new();
        while lines.len() < max {
            match self.read_line()? {
                Some(line) => lines.push(line),
                None => break,
            }
        }
        Ok(lines)
    }

    fn read_line(&mut self) -> io::Result<Option<Line>> {
        let mut buf = Vec::new();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let read = (&mut self.reader).take(limit).read_until(b'\n', &mut buf)?;
        if read == 0 {
            return Ok(None);
        }
        let mut consumed = read as u64;
        let text = if buf.last() == Some(&b'\n') {
            buf.pop();
            Some(buf)
        } else if buf.len() <= MAX_LINE_BYTES {
            // The last line lacks its newline: a crash cut the write short. It is offered to
            // the parser all the same; a complete frame is still evidence.
            Some(buf)
        } else {
            loop {
                let mut skipped = Vec::new();
                let n = (&mut self.reader)
                    .take(SKIP_CHUNK_BYTES)
                    .read_until(b'\n', &mut skipped)?;
                consumed += n as u64;
                if n == 0 || skipped.last() == Some(&b'\n') {
                    break;
                }
            }
            None
        };
        self.position += consumed;
        Ok(Some(Line {
            text,
            end: self.position,
        }))
    }

    /// Durably records that everything before `offset` is settled.
    pub fn commit(&self, offset: u64) -> io::Result<()> {
        let temp = sidecar(&self.path, OFFSET_TEMP_SUFFIX);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(offset.to_string().as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, sidecar(&self.path, OFFSET_SUFFIX))?;
        self.sync_parent()
    }

    /// Removes the fully published file, then its progress record; the lock goes with the
    /// cursor. If the data file cannot be removed, its end is recorded instead, so the next
    /// pass finds nothing left to publish in it.
    pub fn finish(self) -> io::Result<()> {
        if let Err(e) = remove_if_present(&self.path) {
            self.commit(self.position)?;
            return Err(e);
        }
        self.sync_parent()?;
        remove_if_present(&sidecar(&self.path, OFFSET_SUFFIX))?;
        remove_if_present(&sidecar(&self.path, OFFSET_TEMP_SUFFIX))
    }

    fn sync_parent(&self) -> io::Result<()> {
        match self.path.parent() {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    }
}

/// Unpublished lines in `path` (after its recorded offset), for the pending gauge at start-up.
pub(crate) fn count_pending_lines(path: &Path) -> io::Result<u64> {
    let offset = Cursor::read_offset(path)?;
    let mut reader = BufReader::new(File::open(path)?);
    reader.seek(SeekFrom::Start(offset))?;
    let mut count = 0u64;
    let mut last = None;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        count += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf.last().copied();
        let n = buf.len();
        reader.consume(n);
    }
    // A final line without its newline is still offered to replay.
    if last.is_some_and(|b| b != b'\n') {
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            static SEQ: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "caracal-evidence-replay-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("dir");
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn claim(path: &Path) -> Cursor {
        match Cursor::claim(path.to_path_buf()).expect("claim") {
            Claim::Claimed(cursor) => cursor,
            Claim::Busy => panic!("busy"),
            Claim::Gone => panic!("gone"),
        }
    }

    fn texts(lines: &[Line]) -> Vec<Option<String>> {
        lines
            .iter()
            .map(|l| {
                l.text
                    .as_ref()
                    .map(|t| String::from_utf8_lossy(t).into_owned())
            })
            .collect()
    }

    #[test]
    fn progress_survives_a_new_claim_and_finishing_leaves_nothing() {
        let dir = Dir::new();
        let path = dir.0.join("pending-1-1.ndjson");
        fs::write(&path, b"a\nb\nc\n").expect("write");
        let mut cursor = claim(&path);
        let first = cursor.read_lines(2).expect("read");
        assert_eq!(texts(&first), [Some("a".into()), Some("b".into())]);
        cursor.commit(first[1].end).expect("commit");
        drop(cursor); // as if the process died here

        let mut cursor = claim(&path);
        let rest = cursor.read_lines(10).expect("read");
        assert_eq!(texts(&rest), [Some("c".into())]);
        assert_eq!(rest[0].end, 6);
        assert!(cursor.read_lines(10).expect("read").is_empty());
        assert_eq!(count_pending_lines(&path).expect("count"), 1);
        cursor.finish().expect("finish");
        assert_eq!(
            fs::read_dir(&dir.0).expect("dir").count(),
            0,
            "data file and sidecar removed"
        );
    }

    #[test]
    fn a_locked_file_is_busy_and_a_removed_one_is_gone() {
        let dir = Dir::new();
        let path = dir.0.join("pending-1-2.ndjson");
        fs::write(&path, b"a\n").expect("write");
        let holder = claim(&path);
        assert!(matches!(
            Cursor::claim(path.clone()).expect("claim"),
            Claim::Busy
        ));
        holder.finish().expect("finish");
        assert!(matches!(
            Cursor::claim(path.clone()).expect("claim"),
            Claim::Gone
        ));
    }

    #[test]
    fn over_long_lines_are_skipped_and_a_torn_tail_is_still_offered() {
        let dir = Dir::new();
        let path = dir.0.join("pending-1-3.ndjson");
        let mut content = b"first\n".to_vec();
        content.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        content.extend(b"\nsecond\ntorn");
        fs::write(&path, &content).expect("write");
        let mut cursor = claim(&path);
        let lines = cursor.read_lines(10).expect("read");
        assert_eq!(
            texts(&lines),
            [
                Some("first".into()),
                None,
                Some("second".into()),
                Some("torn".into())
            ]
        );
        assert_eq!(lines[3].end, content.len() as u64);
        assert_eq!(count_pending_lines(&path).expect("count"), 4);
    }

    #[test]
    fn files_are_listed_oldest_first_whatever_their_pid() {
        let dir = Dir::new();
        for name in [
            "pending-9-300.ndjson",
            "pending-10-200.ndjson",
            "pending-9-100.ndjson",
            "pending-9-100.ndjson.offset",
            ".probe-1-1",
        ] {
            fs::write(dir.0.join(name), b"").expect("write");
        }
        let names: Vec<String> = list_data_files(&dir.0)
            .expect("list")
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        assert_eq!(
            names,
            [
                "pending-9-100.ndjson",
                "pending-10-200.ndjson",
                "pending-9-300.ndjson"
            ]
        );
    }
}
