//! JSON access log, one line per request. Lines are handed to a writer thread through a
//! bounded channel, so a slow disk never blocks a request: when the channel is full the
//! line is dropped and counted (`gatehouse_access_log_dropped_total`).

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;

enum Msg {
    Line(String),
    Flush(SyncSender<()>),
}

pub struct AccessLog {
    tx: Option<SyncSender<Msg>>,
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
    let tx = out.map(|w| {
        let (tx, rx) = sync_channel(65_536);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(w, rx))
            .ok();
        tx
    });
    let _ = LOG.set(AccessLog { tx, dropped });
    Ok(())
}

/// The writer never blocks in `recv`: it wakes every 10 ms and drains what queued up.
/// Blocking would make every request's `try_send` wake this thread (a futex call and a
/// context switch per request, which profiling showed as the largest access-log cost);
/// polling keeps the sending side a plain queue push.
fn writer(w: Box<dyn Write + Send>, rx: Receiver<Msg>) {
    use std::sync::mpsc::TryRecvError;
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, w);
    loop {
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(Msg::Line(l)) => {
                    let _ = w.write_all(l.as_bytes());
                    wrote = true;
                }
                Ok(Msg::Flush(ack)) => {
                    let _ = w.flush();
                    let _ = ack.send(());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = w.flush();
                    return;
                }
            }
        }
        if wrote {
            let _ = w.flush();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

pub fn enabled() -> bool {
    LOG.get().is_some_and(|l| l.tx.is_some())
}

pub fn write(line: String) {
    if let Some(l) = LOG.get() {
        if let Some(tx) = &l.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(Msg::Line(line)) {
                l.dropped.inc();
            }
        }
    }
}

/// Waits (bounded) until every queued line is written; called before the process exits.
pub fn flush() {
    if let Some(tx) = LOG.get().and_then(|l| l.tx.as_ref()) {
        let (ack_tx, ack_rx) = sync_channel(1);
        if tx.send(Msg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(std::time::Duration::from_secs(2));
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
