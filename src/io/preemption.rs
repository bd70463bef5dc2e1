//! Signals: SIGINT and SIGTERM end a run without leaving anything behind, and SIGTERM — what
//! Slurm sends a job it preempts or that reaches its time limit — becomes, in a resumable
//! command, a request to stop between units of work.
//!
//! The CLI calls [`install`] first thing: from then on one thread receives SIGINT and SIGTERM
//! (the only signal mechanism of mscope). For a signal that ends the run it removes the
//! temporary files in flight and the output lock files ([`crate::io::output_guard`]), then ends
//! the process by the same signal, as if it had not been caught: the shell reports 130 for
//! SIGINT and 143 for SIGTERM (128 + the signal), and a shell loop around mscope stops on
//! Ctrl-C as it should.
//!
//! A resumable command (`ntk` in blocks, shards of `ntk`, `embed`, `compare`) calls [`watch`]:
//! then the first SIGTERM only raises a flag, which the command reads with [`requested`] after
//! each finished tile or batch. The finished units are already in the run's checkpoint, so the
//! command returns [`crate::Error::Preempted`] and the process exits with [`EXIT_PREEMPTED`];
//! rerunning the same command resumes from the checkpoint and writes the same bytes. A second
//! SIGTERM, or SIGINT, ends even a resumable run at once (its finished units stay in the
//! checkpoint). SIGKILL cannot be caught: a killed run loses only the unit in progress, and the
//! next run on the same output sweeps the temporary file it left.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::error::{Error, Result};

/// Exit status of a run stopped by SIGTERM after saving its checkpoint: 75, `EX_TEMPFAIL` of
/// sysexits.h ("temporary failure, try again"). It differs from 1 (an error: rerunning will
/// not help) and from 143 (128 + SIGTERM: a run the signal ended without a checkpoint to
/// resume from), so a batch script can requeue exactly the runs that stopped cleanly:
/// `[ $? -eq 75 ] && scontrol requeue ${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID` in an
/// array task (`mscope slurm plan` writes that script).
pub const EXIT_PREEMPTED: u8 = 75;

/// Whether SIGTERM is a stop request (a resumable command called [`watch`]).
static WATCHED: AtomicBool = AtomicBool::new(false);
/// Whether a stop was requested.
static STOP: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Starts the thread that handles SIGINT and SIGTERM for the rest of the process (once; later
/// calls return the first outcome).
pub fn install() -> Result<()> {
    INSTALLED
        .get_or_init(|| {
            let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
                .map_err(|e| format!("cannot handle SIGINT and SIGTERM: {e}"))?;
            std::thread::Builder::new()
                .name("mscope-signals".into())
                .spawn(move || {
                    for signal in signals.forever() {
                        let stop_request = signal == SIGTERM
                            && WATCHED.load(Ordering::SeqCst)
                            && !STOP.swap(true, Ordering::SeqCst);
                        if !stop_request {
                            end_by(signal);
                        }
                    }
                })
                .map(|_| ())
                .map_err(|e| format!("cannot start the signal thread: {e}"))
        })
        .clone()
        .map_err(Error::input)
}

/// Removes what the run holds on disk and ends the process by `signal`'s default action.
fn end_by(signal: i32) -> ! {
    crate::io::output_guard::abandon();
    let _ = signal_hook::low_level::emulate_default_handler(signal);
    // Not reached for SIGINT and SIGTERM, whose default action ends the process.
    std::process::exit(128 + signal)
}

/// Makes SIGTERM a stop request for the rest of the process.
pub fn watch() -> Result<()> {
    install()?;
    WATCHED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether SIGTERM arrived since [`watch`].
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
