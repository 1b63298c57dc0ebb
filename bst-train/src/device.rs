//! `--device auto|gpu|cpu`: which backend trains and scores.

use bst_core::backend::{Backend, CpuBackend};
use bst_core::checkpoint::Checkpoint;
use bst_core::config::Config;
use bst_core::data::Dataset;
use bst_core::gpu_backend::GpuBackend;
use bst_core::memory;
use bst_core::model::Model;
use bst_kernels::gpu::{GpuContext, GpuOptions};
use clap::ValueEnum;
use std::sync::{Arc, OnceLock};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// A hardware GPU when there is one, else the CPU (software Vulkan is slower than
    /// the CPU backend, so it is never picked by `auto`).
    Auto,
    /// The GPU through wgpu (Vulkan, Metal or DX12); fails when no adapter exists.
    Gpu,
    /// The CPU reference backend.
    Cpu,
}

/// The GPU context, created once per process and shared by every model (the ablation
/// trains five). `None` when no adapter was found.
fn gpu_context(allow_software: bool) -> Result<Arc<GpuContext>, String> {
    static CTX: OnceLock<Result<Arc<GpuContext>, String>> = OnceLock::new();
    CTX.get_or_init(|| {
        let opts = GpuOptions {
            allow_software,
            ..Default::default()
        };
        // A rank of a data-parallel launch takes its local rank's adapter among its
        // host's (`GpuContext::for_local_rank`); a lone process the best.
        let local_rank = crate::cluster::member().map_or(0, |m| m.local_rank);
        GpuContext::for_local_rank(&opts, local_rank)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    })
    .clone()
}

/// What a new training backend's parameters start as.
#[derive(Clone, Copy)]
pub enum Start {
    /// Freshly initialised (spec section 2).
    Init,
    /// About to be replaced by a checkpoint's: on the CPU a zeroed arena whose pages are
    /// not touched until then, so a resume does not hold an initialised model (565 MB at
    /// 100M Taobao rows) beside the checkpoint's arenas while they are restored.
    Restore,
}

/// The backend for `device`, for training from `start`.
pub fn make_backend(
    device: Device,
    cfg: &Config,
    ds: &Dataset,
    start: Start,
) -> anyhow::Result<Box<dyn Backend>> {
    let sizes = ds.vocab.sizes();
    let ctx = choose(device, "training")?;
    memory::check_available(memory::model_needs(cfg, sizes, true, ctx.is_none()))?;
    Ok(match (ctx, start) {
        (Some(ctx), _) => Box::new(GpuBackend::init(ctx, cfg, sizes)?),
        (None, Start::Init) => Box::new(CpuBackend::new(cfg, sizes)),
        (None, Start::Restore) => {
            let model = Model::new(&cfg.model, sizes);
            let zeroed = vec![0.0; model.layout.total];
            Box::new(CpuBackend::with_params(cfg, model, zeroed))
        }
    })
}

/// The backend for `device` holding a checkpoint's model and parameters, for `eval`,
/// `predict` and `rank`.
pub fn backend_from_checkpoint(
    device: Device,
    ckpt: &Checkpoint,
) -> anyhow::Result<Box<dyn Backend>> {
    let ctx = choose(device, "scoring")?;
    let needs = memory::model_needs(&ckpt.config, ckpt.vocab.sizes(), false, ctx.is_none());
    memory::check_available(needs)?;
    Ok(match ctx {
        Some(ctx) => {
            let model = Model::new(&ckpt.config.model, ckpt.vocab.sizes());
            Box::new(GpuBackend::new(
                ctx,
                &ckpt.config,
                model,
                ckpt.params.clone(),
            )?)
        }
        None => Box::new(ckpt.cpu_backend()),
    })
}

/// The GPU context for `device`, or `None` for the CPU; `doing` completes the note that
/// `auto` prints when it falls back to the CPU ("training", "scoring").
fn choose(device: Device, doing: &str) -> anyhow::Result<Option<Arc<GpuContext>>> {
    Ok(match device {
        Device::Cpu => None,
        // The user asked for the GPU: a software adapter is taken (with a warning).
        Device::Gpu => Some(gpu_context(false).map_err(anyhow::Error::msg)?),
        Device::Auto => match gpu_context(true) {
            Ok(ctx) if !ctx.is_software() => Some(ctx),
            Ok(ctx) => {
                note_once(&format!(
                    "note: only a software GPU adapter ({}); {doing} on the CPU, which is faster (--device gpu forces it)",
                    ctx.describe()
                ));
                None
            }
            Err(_) => {
                note_once(&format!(
                    "note: no GPU adapter found; {doing} on the CPU (--device gpu says why)"
                ));
                None
            }
        },
    })
}

fn note_once(msg: &str) {
    static SAID: OnceLock<()> = OnceLock::new();
    SAID.get_or_init(|| eprintln!("{msg}"));
}
