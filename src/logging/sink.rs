//! Where access lines go: a buffer in memory that one thread writes to stderr in batches.
//!
//! A line per request written straight to stderr is a system call per request, made on
//! the thread that serves connections. Here a request appends its line to a buffer and
//! goes on; the writer thread, woken when the buffer stops being empty, waits
//! [`GATHER`] for more lines and writes them all at once. A line reaches stderr at most
//! a few milliseconds after its request ended, and what a `kill -9` can lose is those
//! milliseconds. A buffer that holds [`CAP`] bytes (stderr not draining: a full pipe,
//! a stopped reader) makes the next request wait for room, as a blocking write to stderr
//! would: lines are never dropped, and memory stays bounded. [`flush`] waits until
//! every line appended so far is written (the process calls it before it exits).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How long the writer waits for more lines after the first of a batch.
const GATHER: Duration = Duration::from_millis(5);
/// A batch this large is written without waiting for more.
const FULL_BATCH: usize = 64 * 1024;
/// The most bytes waiting to be written; a request that would add to more waits for room.
const CAP: usize = 1024 * 1024;

struct State {
    /// Lines appended, not yet taken by the writer.
    lines: Vec<u8>,
    /// The writer is writing a batch it took.
    writing: bool,
}

struct Sink {
    state: Mutex<State>,
    /// Signals the writer that lines are waiting.
    wake: Condvar,
    /// Signals requests waiting for room, and [`flush`], that a batch was written.
    written: Condvar,
    /// The writer thread runs; without it each line is written by its caller.
    threaded: AtomicBool,
}

static SINK: OnceLock<&'static Sink> = OnceLock::new();

fn sink() -> &'static Sink {
    SINK.get_or_init(|| {
        let sink: &'static Sink = Box::leak(Box::new(Sink {
            state: Mutex::new(State {
                lines: Vec::with_capacity(FULL_BATCH),
                writing: false,
            }),
            wake: Condvar::new(),
            written: Condvar::new(),
            threaded: AtomicBool::new(true),
        }));
        let spawned = std::thread::Builder::new()
            .name("certgate-log".into())
            .spawn(move || sink.run(&mut std::io::stderr()));
        if let Err(e) = spawned {
            // Without the writer thread every line would wait forever: say so once, and
            // let the writes happen on the callers' threads instead.
            eprintln!("certgate: cannot start the log writer thread ({e}); writing directly");
            sink.threaded.store(false, Ordering::Relaxed);
        }
        sink
    })
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves only bytes behind: keep going with them.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sink {
    fn run(&self, out: &mut dyn Write) {
        let mut spare = Vec::with_capacity(FULL_BATCH);
        loop {
            let mut st = lock(&self.state);
            while st.lines.is_empty() {
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.lines.len() < FULL_BATCH {
                drop(st);
                std::thread::sleep(GATHER);
                st = lock(&self.state);
            }
            std::mem::swap(&mut st.lines, &mut spare);
            st.writing = true;
            drop(st);
            // A write error (stderr closed) loses these lines whatever is done; the
            // gateway keeps serving.
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
            if spare.capacity() > 4 * FULL_BATCH {
                spare.shrink_to(FULL_BATCH);
            }
            let mut st = lock(&self.state);
            st.writing = false;
            drop(st);
            self.written.notify_all();
        }
    }

    fn push(&self, line: &[u8]) {
        let mut st = lock(&self.state);
        if !self.threaded.load(Ordering::Relaxed) {
            // No writer thread: write here, in order, under the lock.
            let _ = std::io::stderr().write_all(line);
            return;
        }
        while st.lines.len() + line.len() > CAP && !st.lines.is_empty() {
            st = self.written.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let was_empty = st.lines.is_empty();
        st.lines.extend_from_slice(line);
        drop(st);
        if was_empty {
            self.wake.notify_one();
        }
    }

    fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut st = lock(&self.state);
        while self.threaded.load(Ordering::Relaxed) && (!st.lines.is_empty() || st.writing) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.wake.notify_one();
            st = self
                .written
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Appends one whole line (ending in `\n`) for the writer thread.
pub fn push(line: &[u8]) {
    sink().push(line);
}

/// Waits until every line appended so far is written, for at most `within` (stderr may
/// not drain).
pub fn flush(within: Duration) {
    if let Some(s) = SINK.get() {
        s.flush(within);
    }
}
