//! [`Collective`] on MPI (Open MPI through rsmpi), for `mpirun -n N bst-train ...`:
//! allreduce (sum) and allgather (varcount) on `MPI_COMM_WORLD`. Only with `--features mpi`.

use crate::cluster::{self, Member};
use bst_core::collective::Collective;
use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::datatype::{Equivalence, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;
use std::sync::Arc;

/// `MPI_COMM_WORLD`.
pub struct MpiGroup {
    world: SimpleCommunicator,
}

// SAFETY: MPI is initialised with `Threading::Serialized` (checked in `init`): any thread
// may call it, one at a time. The training loop calls the collectives from one thread.
unsafe impl Send for MpiGroup {}
unsafe impl Sync for MpiGroup {}

impl MpiGroup {
    fn gather<T: Equivalence + Copy + Default>(
        &self,
        local: &[T],
        counts: &[usize],
        out: &mut Vec<T>,
    ) {
        assert_eq!(counts.len(), self.size(), "one count per rank");
        assert_eq!(counts[self.rank()], local.len(), "this rank's count");
        let counts: Vec<i32> = counts.iter().map(|&c| count(c)).collect();
        let displs: Vec<i32> = counts
            .iter()
            .scan(0i64, |at, &c| {
                let d = *at;
                *at += c as i64;
                Some(i32::try_from(d).expect("fewer than 2^31 gathered elements"))
            })
            .collect();
        out.clear();
        out.resize(counts.iter().map(|&c| c as usize).sum(), T::default());
        let mut part = PartitionMut::new(&mut out[..], &counts[..], &displs[..]);
        self.world.all_gather_varcount_into(local, &mut part);
    }

    fn sum<T: Equivalence + Copy>(&self, buf: &mut [T]) {
        // rsmpi has no in-place allreduce: send a copy.
        for chunk in buf.chunks_mut(1 << 30) {
            let send = chunk.to_vec();
            self.world
                .all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).expect("MPI counts are below 2^31")
}

impl Collective for MpiGroup {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn sum_f32(&self, buf: &mut [f32]) {
        self.sum(buf);
    }
    fn sum_f64(&self, buf: &mut [f64]) {
        self.sum(buf);
    }
    fn gather_u32(&self, local: &[u32], counts: &[usize], out: &mut Vec<u32>) {
        self.gather(local, counts, out);
    }
    fn gather_f32(&self, local: &[f32], counts: &[usize], out: &mut Vec<f32>) {
        self.gather(local, counts, out);
    }
}

/// Whether this process was started by an MPI launcher (Open MPI's `mpirun`, or a PMI
/// one): only then is MPI initialised, so a plain `bst-train` needs no launcher.
pub fn launched() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// Initialises MPI when launched by `mpirun` and records the group ([`cluster::join`]);
/// sizes the CPU thread pool to this rank's share of its host's cores unless
/// `RAYON_NUM_THREADS` says otherwise. The universe finalises MPI when dropped: keep it
/// until the end of `main`.
pub fn init() -> anyhow::Result<Option<Universe>> {
    if !launched() {
        return Ok(None);
    }
    let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
        .ok_or_else(|| anyhow::anyhow!("MPI was initialised already"))?;
    if !matches!(threading, Threading::Serialized | Threading::Multiple) {
        anyhow::bail!("this MPI library gives threading level {threading:?}, bst needs Serialized");
    }
    let world = universe.world();
    let local = world.split_shared(world.rank());
    let (local_rank, local_size) = (local.rank() as usize, local.size() as usize);
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (cores / local_size).max(1);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .map_err(|e| anyhow::anyhow!("sizing the thread pool: {e}"))?;
    }
    let host = mpi::environment::processor_name().unwrap_or_else(|_| "?".into());
    cluster::join(Member {
        group: Arc::new(MpiGroup { world }),
        host,
        local_rank,
        local_size,
    });
    Ok(Some(universe))
}

/// Stops every rank: `MPI_Abort` on the world, after `msg` on standard error (the
/// launcher then names the rank that aborted).
pub fn abort(msg: &str, code: i32) -> ! {
    let world = SimpleCommunicator::world();
    eprintln!("rank {} of {}: {msg}", world.rank(), world.size());
    world.abort(code)
}
