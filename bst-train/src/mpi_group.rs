//! [`Collective`] on MPI (Open MPI through rsmpi), for `mpirun -n N bst-train ...`:
//! allreduce (sum, blocking or started: `MPI_Iallreduce`) and allgather (varcount) on
//! `MPI_COMM_WORLD`. Only with `--features mpi`.

use crate::cluster::{self, Member};
use bst_core::collective::Collective;
use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::datatype::{Equivalence, PartitionMut};
use mpi::environment::Universe;
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Elements of one MPI call at most (its counts are `i32`).
const CHUNK: usize = 1 << 30;

/// `MPI_COMM_WORLD`.
pub struct MpiGroup {
    world: SimpleCommunicator,
    /// Buffers kept across calls (a training step allocates none once they have grown),
    /// and the started sums.
    scratch: Mutex<Scratch>,
}

#[derive(Default)]
struct Scratch {
    /// The send copy of a blocking sum (rsmpi's allreduce is not in place).
    send_f32: Vec<f32>,
    send_f64: Vec<f64>,
    /// A gather's counts and displacements.
    counts: Vec<i32>,
    displs: Vec<i32>,
    /// The send copy of each started sum, by its place among the started ones: a send
    /// copy is not touched while its request is alive.
    started: Vec<Vec<f32>>,
    /// The started sums' requests, in the order started.
    requests: Vec<ffi::MPI_Request>,
}

// SAFETY: MPI is initialised with `Threading::Serialized` (checked in `init`): any thread
// may call it, one at a time. The training loop calls the collectives from one thread,
// and `scratch` is locked around every collective (started ones included).
unsafe impl Send for MpiGroup {}
unsafe impl Sync for MpiGroup {}

impl MpiGroup {
    fn scratch(&self) -> MutexGuard<'_, Scratch> {
        self.scratch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gather<T: Equivalence + Copy + Default>(
        &self,
        local: &[T],
        counts: &[usize],
        out: &mut Vec<T>,
    ) {
        assert_eq!(counts.len(), self.size(), "one count per rank");
        assert_eq!(counts[self.rank()], local.len(), "this rank's count");
        let mut scratch = self.scratch();
        let Scratch {
            counts: c, displs, ..
        } = &mut *scratch;
        c.clear();
        c.extend(counts.iter().map(|&n| count(n)));
        displs.clear();
        let mut at = 0usize;
        for &n in counts {
            displs.push(i32::try_from(at).expect("fewer than 2^31 gathered elements"));
            at += n;
        }
        out.clear();
        out.resize(at, T::default());
        let mut part = PartitionMut::new(&mut out[..], &c[..], &displs[..]);
        self.world.all_gather_varcount_into(local, &mut part);
    }

    fn sum<T: Equivalence + Copy>(&self, buf: &mut [T], send: &mut Vec<T>) {
        for chunk in buf.chunks_mut(CHUNK) {
            send.clear();
            send.extend_from_slice(chunk);
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
        self.sum(buf, &mut self.scratch().send_f32);
    }
    fn sum_f64(&self, buf: &mut [f64]) {
        self.sum(buf, &mut self.scratch().send_f64);
    }
    fn gather_u32(&self, local: &[u32], counts: &[usize], out: &mut Vec<u32>) {
        self.gather(local, counts, out);
    }
    fn gather_f32(&self, local: &[f32], counts: &[usize], out: &mut Vec<f32>) {
        self.gather(local, counts, out);
    }

    /// `MPI_Iallreduce` from a send copy into `buf`.
    unsafe fn start_sum_f32(&self, buf: *mut f32, len: usize) {
        let mut scratch = self.scratch();
        let s = &mut *scratch;
        for at in (0..len).step_by(CHUNK) {
            let n = (len - at).min(CHUNK);
            let k = s.requests.len();
            if s.started.len() == k {
                s.started.push(Vec::new());
            }
            let send = &mut s.started[k];
            send.clear();
            // SAFETY: the caller lends the `len` values at `buf` until `wait_sums`.
            let (part, n_i32) = (unsafe { buf.add(at) }, count(n));
            send.extend_from_slice(unsafe { std::slice::from_raw_parts(part, n) });
            let mut request = MaybeUninit::uninit();
            // SAFETY: `send` stays untouched while the request lives (a later start takes
            // another send copy; `wait_sums` ends the requests before any reuse), and the
            // caller lends `part` until `wait_sums`.
            unsafe {
                ffi::MPI_Iallreduce(
                    send.as_ptr().cast(),
                    part.cast(),
                    n_i32,
                    f32::equivalent_datatype().as_raw(),
                    SystemOperation::sum().as_raw(),
                    self.world.as_raw(),
                    request.as_mut_ptr(),
                );
                s.requests.push(request.assume_init());
            }
        }
    }

    /// `MPI_Testall` on the started sums: Open MPI moves a nonblocking collective only
    /// inside its calls (it has no progress thread).
    fn progress(&self) {
        let mut s = self.scratch();
        if s.requests.is_empty() {
            return;
        }
        let mut done = 0;
        // SAFETY: live requests of this group; a completed one becomes the null request.
        unsafe {
            ffi::MPI_Testall(
                count(s.requests.len()),
                s.requests.as_mut_ptr(),
                &mut done,
                ffi::RSMPI_STATUSES_IGNORE,
            );
        }
        if done != 0 {
            s.requests.clear();
        }
    }

    fn wait_sums(&self) {
        let mut s = self.scratch();
        if s.requests.is_empty() {
            return;
        }
        // SAFETY: live requests of this group.
        unsafe {
            ffi::MPI_Waitall(
                count(s.requests.len()),
                s.requests.as_mut_ptr(),
                ffi::RSMPI_STATUSES_IGNORE,
            );
        }
        s.requests.clear();
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
        group: Arc::new(MpiGroup {
            world,
            scratch: Mutex::default(),
        }),
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
    crate::cluster::say(&format!("rank {} of {}: {msg}", world.rank(), world.size()));
    world.abort(code)
}
