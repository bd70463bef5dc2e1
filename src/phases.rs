//! Phase timers for finding a command's fixed costs. With `MSCOPE_PHASES` set in the
//! environment, each [`mark`] prints on stderr the wall-clock milliseconds since the previous
//! mark and since the first (which `main` makes on entry), so `MSCOPE_PHASES=1 mscope embed ...`
//! shows how long reading the inputs, loading the tokenizer and the weights, the forward passes
//! and writing the output each take. Unset, a mark costs one environment lookup the first time
//! and a load after it.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The first mark's time and the previous one's, where phases are timed.
static MARKS: OnceLock<Option<Mutex<(Instant, Instant)>>> = OnceLock::new();

/// Ends phase `name`, printed as `phase NAME: +Δ ms (T ms)`.
pub fn mark(name: &str) {
    let Some(marks) = MARKS.get_or_init(|| {
        std::env::var_os("MSCOPE_PHASES").map(|_| Mutex::new((Instant::now(), Instant::now())))
    }) else {
        return;
    };
    let now = Instant::now();
    let mut marks = marks.lock().unwrap_or_else(|e| e.into_inner());
    let (first, last) = *marks;
    eprintln!(
        "phase {name}: +{:.1} ms ({:.1} ms)",
        (now - last).as_secs_f64() * 1e3,
        (now - first).as_secs_f64() * 1e3
    );
    marks.1 = now;
}
