//! JSON access log, one line per request. A request appends its line to a shared
//! pending buffer; a writer thread takes the whole buffer every 10 ms and writes it with
//! one `write`. A slow disk never blocks a request: when the pending buffer is over
//! `MAX_PENDING` bytes the line is dropped and counted (`gatehouse_access_log_dropped_total`).
//!
//! Why a buffer and not a channel of lines: with one `String` message per line, every line
//! was allocated on the proxy's worker thread and freed on the writer's (a cross-thread
//! free, which the allocator settles later on the worker), and the writer dequeued each
//! line on its own; together about 1.5 µs of the proxy core's time per request in the
//! `proxy-small` profile (loadtest/PROFILE.md). Appending is a short uncontended lock and
//! a copy, and the line's allocation is freed where it was made.

use parking_lot::Mutex;
use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

/// Bytes of lines waiting for the writer before new lines are dropped: about 100,000
/// typical lines, several seconds of the busiest single-core traffic. The bound is in
/// bytes, so long lines (long paths) cannot make it hold more memory.
const MAX_PENDING: usize = 32 << 20;
/// How often the writer takes what queued up.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// The destination, with the writer's spare buffer: whoever drains holds this lock across
/// the swap and the write, so batches reach the file in the order they were taken.
struct Out {
    w: Box<dyn Write + Send>,
    spare: Vec<u8>,
}

struct Sink {
    pending: Mutex<Vec<u8>>,
    out: Mutex<Out>,
}

impl Sink {
    /// Writes what is pending now. The pending lock is held only for the swap.
    fn drain(&self) {
        let mut out = self.out.lock();
        let out = &mut *out;
        std::mem::swap(&mut out.spare, &mut *self.pending.lock());
        if out.spare.is_empty() {
            return;
        }
        let _ = out.w.write_all(&out.spare);
        let _ = out.w.flush();
        out.spare.clear();
        // A burst (a stalled disk) may have grown the buffer far past a normal batch:
        // give that memory back instead of keeping it for good.
        if out.spare.capacity() > 4 << 20 {
            out.spare = Vec::new();
        }
    }
}

pub struct AccessLog {
    sink: Option<&'static Sink>,
    dropped: prometheus::IntCounter,
}

static LOG: OnceLock<AccessLog> = OnceLock::new();

/// Opens the destination once per process: `stdout`, `stderr`, `off` or a file path.
pub fn init(path: &str) -> Result<(), String> {
    let out: Option<Box<dyn Write + Send>> = match path {
        "off" | "" => None,
        "stdout" => Some(Box::new(std::io::stdout())),
        "stderr" => Some(Box::new(std::io::stderr())),
        file => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .map_err(|e| format!("cannot open access log {file:?}: {e}"))?,
        )),
    };
    let dropped = prometheus::register_int_counter!(
        "gatehouse_access_log_dropped_total",
        "Access log lines dropped because the writer fell behind"
    )
    .map_err(|e| e.to_string())?;
    let sink = out.map(|w| {
        // One per process, for the process's whole life.
        let sink: &'static Sink = Box::leak(Box::new(Sink {
            pending: Mutex::new(Vec::with_capacity(64 * 1024)),
            out: Mutex::new(Out {
                w,
                spare: Vec::with_capacity(64 * 1024),
            }),
        }));
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(sink))
            .ok();
        sink
    });
    let _ = LOG.set(AccessLog { sink, dropped });
    Ok(())
}

/// The writer never waits for lines: it wakes every 10 ms and writes what queued up.
/// Being woken per line would cost every request a futex call and a context switch (the
/// largest access-log cost in an earlier profile); polling keeps appending a plain copy.
fn writer(sink: &'static Sink) {
    loop {
        std::thread::sleep(DRAIN_EVERY);
        sink.drain();
    }
}

pub fn enabled() -> bool {
    LOG.get().is_some_and(|l| l.sink.is_some())
}

/// Queues one line (with its newline) for the writer.
pub fn write(line: &str) {
    if let Some(l) = LOG.get() {
        if let Some(sink) = l.sink {
            let mut pending = sink.pending.lock();
            if pending.len() + line.len() > MAX_PENDING {
                drop(pending);
                l.dropped.inc();
                return;
            }
            pending.extend_from_slice(line.as_bytes());
        }
    }
}

thread_local! {
    /// Each worker thread builds its request lines in one buffer that it keeps, so a
    /// line costs no allocation of its own (it is copied into the pending buffer).
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(1024));
}

/// Builds a line in this thread's line buffer (cleared first) and queues it. A line
/// longer than 64 KiB does not keep its buffer's size for the thread's life.
pub fn write_with(build: impl FnOnce(&mut String)) {
    LINE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut line) => {
            line.clear();
            build(&mut line);
            write(&line);
            if line.capacity() > 64 * 1024 {
                *line = String::with_capacity(1024);
            }
        }
        // Only if `build` itself logs a line: that one gets a buffer of its own.
        Err(_) => {
            let mut line = String::with_capacity(512);
            build(&mut line);
            write(&line);
        }
    });
}

/// Writes every queued line now; called before the process exits. Waits at most 2 s, so a
/// stalled disk cannot hold the exit: the write runs on a thread of its own.
pub fn flush() {
    if let Some(sink) = LOG.get().and_then(|l| l.sink) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("access-log-flush".into())
            .spawn(move || {
                sink.drain();
                let _ = done.send(());
            });
        if spawned.is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(2));
        }
    }
}

/// RFC 3339 UTC timestamp with milliseconds, without pulling in a date crate.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    crate::clock::format_instant(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Appends the RFC 3339 timestamp (`2026-11-22T09:19:14.932Z`) to a line.
/// The date and time up to the second are computed once per second per thread.
pub fn rfc3339_into(out: &mut String, t: std::time::SystemTime) {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    SECOND.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != d.as_secs() {
            let text = seconds_text(d.as_secs());
            *c = (d.as_secs(), text);
        }
        out.push_str(&c.1);
    });
    let ms = d.subsec_millis();
    out.push('.');
    out.push(char::from(b'0' + (ms / 100) as u8));
    out.push(char::from(b'0' + (ms / 10 % 10) as u8));
    out.push(char::from(b'0' + (ms % 10) as u8));
    out.push('Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (the calendar math is `clock::civil_from_days`).
fn seconds_text(secs: u64) -> String {
    let secs = secs as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = crate::clock::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_000_000_123)),
            "2026-11-18T11:06:40.123Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn the_cached_line_timestamp_matches() {
        for t in [0u64, 1_795_000_000_123, 951_782_400_999, 1_795_000_000_124] {
            let at = UNIX_EPOCH + Duration::from_millis(t);
            let mut s = String::new();
            rfc3339_into(&mut s, at);
            assert_eq!(s, rfc3339(at));
        }
    }
}
