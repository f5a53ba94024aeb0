//! [`AuditPublisher`]: the [`AuditSink`] of the STS and the Gateway.
//!
//! `emit` puts the event in a bounded channel and returns. One background task takes events in
//! batches (at most `batch`, or whatever arrived within `flush_interval`), signs each, and
//! `XADD`s the batch in order (one round trip on Redis, all or nothing). The first failed
//! publication diverts the rest of the batch, and the following batches, to the replay spool; a replay pass (every `replay_interval`, once the bus
//! answers `ping`) publishes the spooled frames oldest first and returns the publisher to live
//! mode when the spool is drained. Everything one publisher delivers therefore reaches the
//! stream in emit order, with one exception: an event that finds the channel full is spooled
//! at once by `emit`, ahead of older events still in the channel (bounded memory wins over
//! order there, as upstream). The task also starts in spool mode, so events emitted at
//! start-up queue behind the replay of files left by an earlier run.
//!
//! An event that neither the stream nor the spool takes is counted in `dropped`, which fails
//! readiness (`audit_evidence_lost`) until restart.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use caracal_core::ports::{AuditEvent, AuditSink, EventBus, MessageAuthenticator, SinkHealth};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use crate::frame::Frame;
use crate::replay::{count_pending_lines, list_data_files, Claim, Cursor};
use crate::spool::{Spool, SpoolStats};

/// The stream the Audit service ingests (`spec/audit-streams-storage.md §3.3`).
pub const AUDIT_STREAM: &str = "caracal.audit.events";

/// How a publisher buffers, batches and spools. The defaults are upstream's (`spec/sts.md §13`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherConfig {
    /// `AUDIT_REPLAY_DIR`; `None` (memory mode) means no spool: an event the stream refuses is
    /// dropped.
    pub replay_dir: Option<PathBuf>,
    /// Target stream, [`AUDIT_STREAM`] in production; tests use their own.
    pub stream: String,
    /// Events the in-memory buffer holds before `emit` spools directly (10 000).
    pub capacity: usize,
    /// Events per flush at most (1000).
    pub batch: usize,
    /// How long an event may wait in the buffer for its batch to fill (50 ms).
    pub flush_interval: Duration,
    /// How often the spool is checked for files to replay (5 s).
    pub replay_interval: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            replay_dir: None,
            stream: AUDIT_STREAM.to_string(),
            capacity: 10_000,
            batch: 1000,
            flush_interval: Duration::from_millis(50),
            replay_interval: Duration::from_secs(5),
        }
    }
}

/// The §15 series (`caracal_sts_<name>`, or `caracal_gateway_<name>`) with their values, in
/// the order `/metrics` lists them. `/metrics.json` uses the same names without `_total`.
pub fn metric_samples(health: &SinkHealth) -> [(&'static str, u64); 8] {
    [
        ("audit_emitted_total", health.emitted),
        ("audit_dropped_total", health.dropped),
        ("audit_replay_pending", health.replay_pending),
        ("audit_replay_files", health.replay_files),
        ("audit_replay_bytes", health.replay_bytes),
        (
            "audit_replay_oldest_age_seconds",
            health.replay_oldest_age_seconds,
        ),
        ("audit_replay_replayed_total", health.replayed),
        ("audit_sink_errors_total", health.sink_errors),
    ]
}

/// State shared by `emit` callers and the background task.
struct Shared {
    spool: Option<Arc<Spool>>,
    mac: Option<Arc<dyn MessageAuthenticator>>,
    emitted: AtomicU64,
    dropped: AtomicU64,
    replayed: AtomicU64,
    sink_errors: AtomicU64,
    /// Events published to the stream live (from the buffer, not from replay files).
    persisted: AtomicU64,
    /// Spooled events not yet replayed, as far as this publisher knows: the files present at
    /// start-up plus what it spooled since, minus what it replayed or skipped. Files another
    /// process adds to the same directory later are not counted (replay directories are one
    /// per service instance; `replay_files` still shows them).
    pending: AtomicU64,
    replay_available: AtomicBool,
}

impl Shared {
    /// Counts events that reached neither the stream nor the spool.
    fn lose(&self, count: usize, why: &str) {
        if count == 0 {
            return;
        }
        self.dropped.fetch_add(count as u64, Ordering::Relaxed);
        tracing::error!(count, why, "audit evidence dropped");
    }

    fn settle_pending(&self, count: u64) {
        // Saturating: see the note on `pending` about files this publisher did not count.
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(count))
            });
    }

    fn set_available(&self, available: bool) {
        let was = self.replay_available.swap(available, Ordering::Relaxed);
        if was && !available {
            tracing::error!("audit replay directory is not writable");
        } else if available && !was {
            tracing::info!("audit replay directory is writable again");
        }
    }

    /// Writes frames to the spool, durably, all or none. Blocking: call from a blocking
    /// context or accept the stall (`emit` on a full buffer does, as backpressure).
    fn spool(&self, frames: &[Frame]) -> io::Result<()> {
        let Some(spool) = &self.spool else {
            return Err(io::Error::other("no replay directory configured"));
        };
        let mut lines = Vec::with_capacity(frames.len() * 512);
        for frame in frames {
            frame.write_line(&mut lines).map_err(io::Error::other)?;
        }
        match spool.append(&lines) {
            Ok(()) => {
                self.pending
                    .fetch_add(frames.len() as u64, Ordering::Relaxed);
                self.set_available(true);
                Ok(())
            }
            Err(e) => {
                self.set_available(false);
                tracing::error!(error = %e, dir = %spool.dir().display(), "audit spool write failed");
                Err(e)
            }
        }
    }

    /// `emit`'s way out when the channel is full or closed: straight to the spool. Once the
    /// publisher is stopped, the file is let go after each write: nobody will replay it while
    /// this process holds its lock, and after `shutdown` nothing here ever will.
    fn spill(&self, event: AuditEvent, why: &str, stopped: bool) {
        let frame = match Frame::seal(&event, self.mac.as_deref()) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!(error = %e, "audit event did not serialise");
                return self.lose(1, "unserialisable event");
            }
        };
        if self.spool(std::slice::from_ref(&frame)).is_err() {
            self.lose(1, why);
        }
        if stopped {
            if let Some(spool) = &self.spool {
                spool.seal();
            }
        }
    }
}

/// Runs blocking file work off the async workers. A panic in it surfaces as an I/O error.
async fn blocking<T, F>(work: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// The buffered, signing, spooling audit publisher. See the module docs.
pub struct AuditPublisher {
    shared: Arc<Shared>,
    tx: mpsc::Sender<AuditEvent>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl AuditPublisher {
    /// Starts the background task; must be called inside a tokio runtime.
    ///
    /// The replay directory is created (0700) and probed here, so `health()` tells at once
    /// whether it is usable; files already in it are replayed as soon as the bus answers,
    /// before live publication resumes. With `mac`, every `data` is signed (`sig`).
    pub fn start(
        bus: Arc<dyn EventBus>,
        mac: Option<Arc<dyn MessageAuthenticator>>,
        config: PublisherConfig,
    ) -> Arc<AuditPublisher> {
        let spool = config.replay_dir.map(|dir| Arc::new(Spool::new(dir)));
        let available = match &spool {
            None => true,
            Some(spool) => match spool.probe() {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, dir = %spool.dir().display(),
                        "audit replay directory unusable; evidence is lost whenever the stream fails");
                    false
                }
            },
        };
        // With a backlog on disk, live events queue behind it (see the module docs).
        let backlog = available
            && spool
                .as_ref()
                .is_some_and(|spool| spool.has_data_files().unwrap_or(false));
        let shared = Arc::new(Shared {
            spool,
            mac,
            emitted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            sink_errors: AtomicU64::new(0),
            persisted: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            replay_available: AtomicBool::new(available),
        });
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let (stop, stop_rx) = watch::channel(false);
        let flusher = Flusher {
            shared: Arc::clone(&shared),
            bus,
            rx,
            stream: config.stream,
            batch_size: config.batch.max(1),
            flush_interval: config.flush_interval,
            replay_interval: config.replay_interval,
            via_spool: backlog,
            pass: None,
        };
        let task = tokio::spawn(flusher.run(stop_rx));
        Arc::new(AuditPublisher {
            shared,
            tx,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// Stops taking events into the buffer, flushes what it holds (to the stream, or to the
    /// spool when the stream fails or a backlog is still being replayed) and returns once the
    /// task has ended. Later `emit`s go straight to the spool. A replay pass in progress stops
    /// at its last recorded offset and resumes at the next start. Safe to call more than
    /// once; every caller returns after the flush.
    ///
    /// Dropping the publisher without this also ends the task after a flush, but nobody
    /// waits for it.
    pub async fn shutdown(&self) {
        let mut task = self.task.lock().await;
        if let Some(handle) = task.take() {
            self.stop.send_replace(true);
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "audit publisher task failed");
            }
        }
    }

    /// The §15 series and their values, from [`AuditSink::health`].
    pub fn metrics(&self) -> [(&'static str, u64); 8] {
        metric_samples(&self.health())
    }
}

impl AuditSink for AuditPublisher {
    fn emit(&self, event: AuditEvent) {
        self.shared.emitted.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => self.shared.spill(event, "audit buffer full", false),
            Err(TrySendError::Closed(event)) => {
                self.shared.spill(event, "audit publisher stopped", true)
            }
        }
    }

    /// Reads the spool directory for the file gauges (one `readdir` and a `stat` per file).
    fn health(&self) -> SinkHealth {
        let shared = &self.shared;
        let stats = match &shared.spool {
            Some(spool) => spool.stats().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the audit replay directory");
                SpoolStats::default()
            }),
            None => SpoolStats::default(),
        };
        SinkHealth {
            emitted: shared.emitted.load(Ordering::Relaxed),
            dropped: shared.dropped.load(Ordering::Relaxed),
            replay_pending: shared.pending.load(Ordering::Relaxed),
            replay_files: stats.files,
            replay_bytes: stats.bytes,
            replay_oldest_age_seconds: stats.oldest_age_seconds,
            replayed: shared.replayed.load(Ordering::Relaxed),
            sink_errors: shared.sink_errors.load(Ordering::Relaxed),
            persisted: shared.persisted.load(Ordering::Relaxed),
            queue_depth: (self.tx.max_capacity() - self.tx.capacity()) as u64,
            queue_capacity: self.tx.max_capacity() as u64,
            replay_available: shared.replay_available.load(Ordering::Relaxed),
        }
    }
}

/// A replay pass: the files listed when it began, oldest first, and the one being read.
struct Pass {
    queue: VecDeque<PathBuf>,
    cursor: Option<Cursor>,
}

/// The background task.
struct Flusher {
    shared: Arc<Shared>,
    bus: Arc<dyn EventBus>,
    rx: mpsc::Receiver<AuditEvent>,
    stream: String,
    batch_size: usize,
    flush_interval: Duration,
    replay_interval: Duration,
    /// Batches go to the spool rather than the stream: the stream failed, or spooled events
    /// wait for replay and must reach the stream first.
    via_spool: bool,
    pass: Option<Pass>,
}

impl Flusher {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        self.count_spooled_at_start().await;
        let mut batch: Vec<AuditEvent> = Vec::with_capacity(self.batch_size);
        let mut flush_at: Option<Instant> = None;
        let mut replay_at = Instant::now();
        let mut closing = false;
        loop {
            let replaying = self.pass.is_some();
            // Never 0: a full batch is flushed before the loop comes back here.
            let room = self.batch_size - batch.len();
            tokio::select! {
                received = self.rx.recv_many(&mut batch, room) => {
                    if received == 0 {
                        // Closed and empty: everything emitted before the stop is in `batch`.
                        self.flush(&mut batch).await;
                        // Release the spool file so the next publisher over this directory
                        // (here, or after a restart) can replay it.
                        if let Some(spool) = &self.shared.spool {
                            spool.seal();
                        }
                        break;
                    }
                    if batch.len() >= self.batch_size {
                        self.flush(&mut batch).await;
                        flush_at = None;
                    } else if flush_at.is_none() {
                        flush_at = Some(Instant::now() + self.flush_interval);
                    }
                }
                _ = sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    self.flush(&mut batch).await;
                    flush_at = None;
                }
                // Also fires if the publisher was dropped without `shutdown`: the task still
                // drains the channel and flushes before it ends.
                _ = stop.changed(), if !closing => {
                    closing = true;
                    self.pass = None;
                    self.rx.close();
                }
                _ = sleep_until(replay_at), if !replaying && !closing => {
                    self.begin_pass().await;
                    replay_at = Instant::now() + self.replay_interval;
                }
                // One chunk per turn, so live batches keep flowing during a long replay.
                () = std::future::ready(()), if replaying && !closing => {
                    self.replay_step().await;
                }
            }
        }
    }

    /// Seeds the pending gauge with the unpublished lines already on disk, and clears what
    /// crashed runs left beside them.
    async fn count_spooled_at_start(&self) {
        let Some(spool) = self.shared.spool.clone() else {
            return;
        };
        if !self.shared.replay_available.load(Ordering::Relaxed) {
            return;
        }
        let counted = blocking(move || {
            if let Err(e) = spool.remove_leftovers() {
                tracing::warn!(error = %e, "could not clear leftovers in the audit replay directory");
            }
            let mut pending = 0;
            for path in list_data_files(spool.dir())? {
                match count_pending_lines(&path) {
                    Ok(lines) => pending += lines,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(pending)
        })
        .await;
        match counted {
            Ok(pending) => {
                self.shared.pending.fetch_add(pending, Ordering::Relaxed);
                if pending > 0 {
                    tracing::info!(
                        pending,
                        "audit events spooled by an earlier run will be replayed"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not count spooled audit events"),
        }
    }

    /// Signs and delivers one batch: to the stream (or the spool in spool mode), the rest to
    /// the other; what neither takes is dropped.
    async fn flush(&mut self, events: &mut Vec<AuditEvent>) {
        if events.is_empty() {
            return;
        }
        let mac = self.shared.mac.clone();
        let mut frames = Vec::with_capacity(events.len());
        for event in events.drain(..) {
            match Frame::seal(&event, mac.as_deref()) {
                Ok(frame) => frames.push(frame),
                Err(e) => {
                    tracing::error!(error = %e, "audit event did not serialise");
                    self.shared.lose(1, "unserialisable event");
                }
            }
        }
        let left = if self.via_spool {
            match self.spool_batch(frames).await {
                Ok(()) => return,
                Err(frames) => {
                    // The spool refuses: the stream is the only way left, order or not.
                    self.via_spool = false;
                    self.publish_live(frames).await
                }
            }
        } else {
            let left = self.publish_live(frames).await;
            if left.is_empty() {
                return;
            }
            match self.spool_batch(left).await {
                Ok(()) => return,
                Err(left) => left,
            }
        };
        self.shared.lose(
            left.len(),
            "neither the audit stream nor the replay spool took them",
        );
    }

    /// Publishes the batch in order (one round trip where the bus can); returns the frames not
    /// published, from the first that failed.
    async fn publish_live(&mut self, mut frames: Vec<Frame>) -> Vec<Frame> {
        let entries: Vec<Vec<(String, String)>> = frames.iter().map(Frame::fields).collect();
        let (published, error) = self.bus.publish_batch(&self.stream, &entries).await;
        self.shared
            .persisted
            .fetch_add(published.min(frames.len()) as u64, Ordering::Relaxed);
        match error {
            None => Vec::new(),
            Some(e) => {
                self.shared.sink_errors.fetch_add(1, Ordering::Relaxed);
                if self.shared.spool.is_some() && !self.via_spool {
                    tracing::warn!(error = %e, "audit stream unavailable; spooling evidence until it answers");
                }
                self.via_spool = self.shared.spool.is_some();
                frames.split_off(published.min(frames.len()))
            }
        }
    }

    /// Spools all frames durably, or hands them all back.
    async fn spool_batch(&self, frames: Vec<Frame>) -> Result<(), Vec<Frame>> {
        if self.shared.spool.is_none() {
            return Err(frames);
        }
        let shared = Arc::clone(&self.shared);
        let count = frames.len();
        let outcome = tokio::task::spawn_blocking(move || {
            let written = shared.spool(&frames);
            (frames, written)
        })
        .await;
        match outcome {
            Ok((_, Ok(()))) => Ok(()),
            Ok((frames, Err(_))) => Err(frames),
            Err(e) => {
                tracing::error!(error = %e, "audit spool write panicked");
                self.shared.lose(count, "audit spool write panicked");
                Ok(())
            }
        }
    }

    /// The periodic check: probe the directory, and start a pass if there is anything to
    /// replay and the bus answers.
    async fn begin_pass(&mut self) {
        let Some(spool) = self.shared.spool.clone() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let work = blocking(move || {
            let probed = spool.probe();
            if let Err(e) = &probed {
                tracing::debug!(error = %e, "audit replay directory probe failed");
            }
            shared.set_available(probed.is_ok());
            if probed.is_err() {
                // Replaying needs to record progress; without that, every pass would publish
                // the same lines again.
                return Ok(None);
            }
            Ok(Some(spool.has_open_file() || spool.has_data_files()?))
        })
        .await;
        match work {
            Ok(Some(true)) => {}
            Ok(Some(false)) => {
                self.via_spool = false;
                return;
            }
            Ok(None) => {
                self.via_spool = false;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the audit replay directory");
                return;
            }
        }
        if let Err(e) = self.bus.ping().await {
            tracing::debug!(error = %e, "audit stream still unavailable; replay waits");
            return;
        }
        self.open_pass().await;
    }

    /// Lets go of this writer's file (so the pass can claim it) and lists the files to replay.
    async fn open_pass(&mut self) {
        let Some(spool) = self.shared.spool.clone() else {
            return;
        };
        let listed = blocking(move || {
            spool.seal();
            if let Err(e) = spool.remove_leftovers() {
                tracing::warn!(error = %e, "could not clear leftovers in the audit replay directory");
            }
            list_data_files(spool.dir())
        })
        .await;
        match listed {
            Ok(files) => {
                self.pass = Some(Pass {
                    queue: files.into(),
                    cursor: None,
                })
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the audit replay directory"),
        }
    }

    /// After the last file of a pass: chase what was spooled meanwhile, or go live.
    async fn end_pass(&mut self) {
        let spooled_meanwhile = self
            .shared
            .spool
            .as_ref()
            .is_some_and(|spool| spool.has_open_file());
        if spooled_meanwhile {
            self.open_pass().await;
        } else {
            if self.via_spool {
                tracing::info!("audit spool drained; publishing live again");
            }
            self.via_spool = false;
        }
    }

    /// Replays one chunk (up to `batch` lines) of the current file, claiming the next file
    /// first if needed.
    async fn replay_step(&mut self) {
        let Some(pass) = self.pass.as_mut() else {
            return;
        };
        let cursor = match pass.cursor.take() {
            Some(cursor) => cursor,
            None => {
                let Some(path) = pass.queue.pop_front() else {
                    self.pass = None;
                    return self.end_pass().await;
                };
                match blocking(move || Cursor::claim(path)).await {
                    Ok(Claim::Claimed(cursor)) => cursor,
                    // Busy: a live writer's or another replayer's; a later pass retries.
                    Ok(Claim::Busy) | Ok(Claim::Gone) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open an audit replay file; a later pass retries");
                        return;
                    }
                }
            }
        };
        let max = self.batch_size;
        let read = blocking(move || {
            let mut cursor = cursor;
            let lines = cursor.read_lines(max)?;
            Ok((cursor, lines))
        })
        .await;
        let (cursor, lines) = match read {
            Ok(read) => read,
            Err(e) => {
                // The cursor (and its lock) is gone; the file stays at its recorded offset.
                tracing::warn!(error = %e, "cannot read an audit replay file; a later pass retries");
                return;
            }
        };
        if lines.is_empty() {
            let path = cursor.path().to_path_buf();
            if let Err(e) = blocking(move || cursor.finish()).await {
                tracing::warn!(error = %e, path = %path.display(), "cannot remove a replayed audit file");
            }
            return;
        }

        let mac = self.shared.mac.clone();
        let mut settled = None;
        let mut failed = false;
        for line in &lines {
            let blank = line
                .text
                .as_deref()
                .is_some_and(|text| text.iter().all(u8::is_ascii_whitespace));
            let frame = line
                .text
                .as_deref()
                .and_then(|text| Frame::from_line(text, mac.as_deref()));
            match frame {
                // Not evidence, so nothing is lost; upstream's drain skips them too.
                None if blank => {}
                None => {
                    tracing::error!(path = %cursor.path().display(), offset = line.end,
                        "unreadable line in an audit replay file");
                    self.shared.lose(1, "unreadable replay line");
                }
                Some(frame) => {
                    if let Err(e) = self.bus.publish(&self.stream, &frame.fields()).await {
                        self.shared.sink_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "audit stream failed during replay; resuming later");
                        failed = true;
                        break;
                    }
                    self.shared.replayed.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.shared.settle_pending(1);
            settled = Some(line.end);
        }

        let cursor = match settled {
            None => Some(cursor),
            Some(offset) => match blocking(move || cursor.commit(offset).map(|()| cursor)).await {
                Ok(cursor) => Some(cursor),
                Err(e) => {
                    tracing::error!(error = %e, "cannot record audit replay progress; stopping replay");
                    self.shared.set_available(false);
                    self.pass = None;
                    return;
                }
            },
        };
        if failed {
            self.pass = None;
            self.via_spool = true;
            return;
        }
        if let Some(pass) = self.pass.as_mut() {
            pass.cursor = cursor;
        }
    }
}
