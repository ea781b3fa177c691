//! `cachem stat --watch SECONDS`: the status again every interval until
//! SIGINT (Ctrl-C) or SIGTERM, then a clean exit (status 0).
//!
//! On a terminal the human picture is redrawn in place (cursor home, each
//! line cleared to its end, the rest of the screen cleared: no flicker, no
//! scrolling). Anywhere else, one line per interval (`key=value` pairs after
//! a UTC timestamp), or one JSON document per line with `--format json`, so
//! the output can be logged or piped. A closed pipe (`| head`) ends the watch
//! quietly.

use crate::{show, CliResult, Fail};
use cachem::{Cache, CacheStatus};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::io::{ErrorKind, IsTerminal, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What each interval prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Human,
    Json,
}

pub fn run(cache: &Cache, interval: Duration, form: Form) -> CliResult {
    // Register the handlers before the first frame, so a signal that comes
    // early still ends the loop cleanly.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Fail(format!("cannot install the signal handlers: {e}"), 1))?;
    let handle = signals.handle();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _ = tx.send(sig);
        }
    });
    let tty = std::io::stdout().is_terminal();
    let result = frames(cache, interval, form, tty, &rx);
    handle.close();
    let _ = waiter.join();
    result
}

fn frames(cache: &Cache, interval: Duration, form: Form, tty: bool, rx: &mpsc::Receiver<i32>) -> CliResult {
    let mut out = std::io::stdout().lock();
    loop {
        let st = cache.status()?;
        let mut frame = Vec::new();
        match (form, tty) {
            (Form::Json, _) => writeln!(frame, "{}", st.to_json())?,
            (Form::Human, false) => writeln!(frame, "{}", line(&st, SystemTime::now()))?,
            (Form::Human, true) => {
                let mut body = Vec::new();
                show::status_human(&mut body, &st)?;
                writeln!(
                    body,
                    "\n{}  every {}s, Ctrl-C to stop",
                    utc(SystemTime::now()),
                    interval.as_secs_f64()
                )?;
                frame.extend_from_slice(b"\x1b[H");
                for l in String::from_utf8_lossy(&body).lines() {
                    frame.extend_from_slice(l.as_bytes());
                    frame.extend_from_slice(b"\x1b[K\n");
                }
                frame.extend_from_slice(b"\x1b[J");
            }
        }
        if let Err(e) = out.write_all(&frame).and_then(|()| out.flush()) {
            if e.kind() == ErrorKind::BrokenPipe {
                return Ok(()); // the reader is gone: nothing left to do
            }
            return Err(e.into());
        }
        match rx.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => continue,
            Ok(_) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

/// One line of figures for logs and pipes.
pub fn line(st: &CacheStatus, now: SystemTime) -> String {
    let r = &st.region;
    let c = &r.counters;
    format!(
        "{} records={} used_bytes={} dead_bytes={} free_bytes={} table_bytes={} owners={} pids={} dead_pids={} \
         inserts={} removes={} compactions={} reaped_records={} recoveries={}",
        utc(now),
        r.records,
        r.used_bytes,
        r.dead_bytes,
        r.free_bytes,
        r.table_bytes,
        r.owners.len(),
        st.pids.len(),
        st.pids.iter().filter(|p| !p.alive).count(),
        c.inserts,
        c.removes,
        c.compactions,
        c.reaped_records,
        c.recoveries
    )
}

/// `2026-11-27T18:40:05Z` (UTC, whole seconds).
pub fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::utc;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn utc_timestamps_match_known_dates() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(utc(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(utc(UNIX_EPOCH + Duration::from_secs(1_798_392_005)), "2026-12-27T17:20:05Z");
    }
}
