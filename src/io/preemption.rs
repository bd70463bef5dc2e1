//! Preemption: SIGTERM — what Slurm sends a job it preempts or that reaches its time limit —
//! becomes a request to stop between units of work, not a kill.
//!
//! A long command calls [`watch`] once; from then on SIGTERM only raises a flag, which the
//! command reads with [`requested`] after each finished tile or batch. The finished units are
//! already in the run's checkpoint, so the command returns [`crate::Error::Preempted`] and the
//! process exits with [`EXIT_PREEMPTED`]; rerunning the same command resumes from the
//! checkpoint and writes the same bytes. (SIGKILL cannot be caught: a killed run loses only the
//! unit in progress, since every finished one is saved as it finishes.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

/// Exit status of a run stopped by SIGTERM after saving its checkpoint: 75, `EX_TEMPFAIL` of
/// sysexits.h ("temporary failure, try again"). It differs from 1 (an error: rerunning will
/// not help) and from 143 (128 + SIGTERM: what a shell reports for a process the signal
/// killed, possibly mid-write), so a batch script can requeue exactly the runs that stopped
/// cleanly: `[ $? -eq 75 ] && scontrol requeue ${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID` in an
/// array task (`mscope slurm plan` writes that script).
pub const EXIT_PREEMPTED: u8 = 75;

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Turns SIGTERM into a stop request for the rest of the process.
pub fn watch() -> Result<()> {
    if FLAG.get().is_some() {
        return Ok(());
    }
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, flag.clone())
        .map_err(|e| Error::input(format!("cannot watch for SIGTERM: {e}")))?;
    let _ = FLAG.set(flag);
    Ok(())
}

/// Whether SIGTERM arrived since [`watch`].
pub fn requested() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::Relaxed))
}
