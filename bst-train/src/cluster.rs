//! The data-parallel group this process trains in: set once at start by the MPI launch
//! (`--features mpi`, [`crate::mpi_group`]), absent otherwise. Code that behaves per rank
//! (who writes the run folder, who prints progress) asks here, without MPI.

use bst_core::collective::Collective;
use std::io::Write;
use std::sync::{Arc, OnceLock};

/// This process's place in a launch of several.
pub struct Member {
    /// The group's collectives.
    pub group: Arc<dyn Collective>,
    /// The host the rank runs on.
    pub host: String,
    /// The rank among the ranks of its host.
    pub local_rank: usize,
    /// Ranks on its host.
    pub local_size: usize,
}

static MEMBER: OnceLock<Member> = OnceLock::new();

/// Records the launch (once, at start).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub fn join(member: Member) {
    assert!(MEMBER.set(member).is_ok(), "the group is set once");
}

/// The launch this process is part of, if it was launched as a group (`mpirun`).
pub fn member() -> Option<&'static Member> {
    MEMBER.get()
}

/// The group's collectives, if this process is one rank of several.
pub fn group() -> Option<Arc<dyn Collective>> {
    member().map(|m| m.group.clone()).filter(|g| g.size() > 1)
}

/// Whether this process writes files and prints progress: rank 0, or a lone process.
pub fn is_root() -> bool {
    member().is_none_or(|m| m.group.rank() == 0)
}

/// Writes `line` and a newline to standard error in one write. The ranks of a launch
/// share the launcher's standard error, and `eprintln!` writes a line in pieces, so two
/// ranks' lines printed at once interleave mid-line; one write of a short line to a pipe
/// is atomic.
pub fn say(line: &str) {
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("{line}\n").as_bytes());
}
