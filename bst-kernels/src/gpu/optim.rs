//! Optimiser updates (Adam, Adagrad) over a parameter arena, lazily over the touched rows
//! of an embedding table, on the GPU (the fill that zeroes the gradient arena each step
//! is [`crate::gpu::elementwise`]'s): launcher for `shaders/optim.wgsl`. CPU reference: [`crate::cpu::optim`].
//!
//! A row-wise binding ([`OptimKernels::bind_rows`]) updates the rows listed in a `u32`
//! tensor (the embedding segments' unique ids of the step, see
//! [`crate::gpu::embedding::EmbeddingSegments`]) and zeroes their gradients after use;
//! set the number of rows each step with [`OptimBinding::set_rows`].
//!
//! ```text
//! let opt = OptimKernels::new(&ctx)?;                                     // once
//! let rule = UpdateRule::Adam { hp, m, v };
//! let mut adam = opt.bind(&ctx, params, grads, rule, n)?;                 // once
//! ...zero the gradients (elementwise fill), forward, backward...
//! adam.set_step(&ctx, t);                                                 // t = 1, 2, ...
//! opt.update(&mut pass, &adam);
//! ```

use super::launch::{Kernels, assert_bound, flat_grid, wgsl_params};
use super::{GpuContext, GpuError, TensorRef};
pub use crate::cpu::optim::{AdagradHyper, AdamHyper};

wgsl_params!(
    "optim.wgsl",
    /// The kernels' uniform, and `Params` of `shaders/optim.wgsl`, written from it.
    pub struct OptimParams {
        n: u32,
        p_off: u32,
        g_off: u32,
        /// Adam's m, Adagrad's sum.
        m_off: u32,
        v_off: u32,
        lr: f32,
        beta1: f32,
        beta2: f32,
        /// 1 - beta1 in f32, as the CPU computes it.
        one_minus_beta1: f32,
        one_minus_beta2: f32,
        eps: f32,
        step: f32,
        bc2_sqrt: f32,
        _pad0: u32,
        /// *_rows: the table's width.
        w: u32,
        /// *_rows: the first row id in `rows`.
        rows_off: u32,
        /// *_rows: R; a row id >= R is skipped.
        table_rows: u32,
        /// L2: the gradient is taken as g + weight_decay * p.
        weight_decay: f32,
        _pad1: u32,
        _pad2: u32,
    },
    // m is Adagrad's sum; rows: the row ids of the *_rows kernels.
    storage [params: f32, grads: f32, m: f32, v: f32, rows: u32],
    kernels ["adam_update", "adagrad_update", "adam_rows", "adagrad_rows"]
);

/// Invocations per workgroup (`WG` in the shader).
const WG: u32 = 256;

/// The update rule and its state tensors, each (n) like the parameters, updated in place.
#[derive(Clone, Copy, Debug)]
pub enum UpdateRule<'a> {
    /// As [`crate::cpu::optim::adam_update`]; set the step with [`OptimBinding::set_step`].
    Adam {
        /// Learning rate, betas, epsilon and weight decay.
        hp: AdamHyper,
        /// (n) first moment.
        m: TensorRef<'a>,
        /// (n) second moment.
        v: TensorRef<'a>,
    },
    /// As [`crate::cpu::optim::adagrad_update`].
    Adagrad {
        /// Learning rate, epsilon and weight decay.
        hp: AdagradHyper,
        /// (n) sum of squared gradients.
        sum: TensorRef<'a>,
    },
}

/// The rows of one embedding table for a lazy update ([`OptimKernels::bind_rows`]).
#[derive(Clone, Copy, Debug)]
pub struct TableRows<'a> {
    /// u32 (max_rows): the ids of the rows to update, distinct, written before each
    /// step's submit (e.g. a table's unique ids in the embedding segments).
    pub ids: TensorRef<'a>,
    /// Most ids one step lists.
    pub max_rows: u32,
    /// R, rows of the table; an id `>= R` is skipped.
    pub table_rows: u32,
    /// w, the table's width.
    pub width: u32,
}

/// Uniform and bind group of one update, made by [`OptimKernels::bind`] or
/// [`OptimKernels::bind_rows`].
#[derive(Debug)]
pub struct OptimBinding {
    params: OptimParams,
    adam: Option<AdamHyper>,
    /// The step last set (Adam's `t`).
    t: u64,
    /// Row-wise: the most rows [`OptimBinding::set_rows`] accepts.
    max_rows: Option<u32>,
    uniform: wgpu::Buffer,
    group: wgpu::BindGroup,
}

impl OptimBinding {
    /// Sets the number of listed rows `u` the next updates of a row-wise binding walk
    /// (n = u * w elements). A `queue.write_buffer`, like [`OptimBinding::set_step`].
    /// Panics for a binding over a range, or `u` above the bound `max_rows`.
    pub fn set_rows(&mut self, ctx: &GpuContext, u: u32) {
        let max = self
            .max_rows
            .expect("optim set_rows: the binding is over a range, not rows");
        assert_bound("optim set_rows", u, max, "rows");
        self.params.n = u * self.params.w;
        self.write_uniform(ctx);
    }

    fn write_uniform(&self, ctx: &GpuContext) {
        ctx.write(&self.uniform, 0, &[self.params]);
    }

    /// Sets the learning rate of the following updates (Adam's bias-corrected step is
    /// recomputed from it by the next [`OptimBinding::set_step`], which this calls again
    /// with the step it last had). A `queue.write_buffer`, like `set_step`.
    pub fn set_lr(&mut self, ctx: &GpuContext, lr: f32) {
        self.params.lr = lr;
        if let Some(hp) = &mut self.adam {
            hp.lr = lr;
            let t = self.t;
            self.set_step(ctx, t);
        } else {
            self.write_uniform(ctx);
        }
    }

    /// Sets Adam's step `t` (1-based) for the following updates: writes the bias
    /// corrections `lr / (1 - beta1^t)` and `sqrt(1 - beta2^t)`, computed in f64 as
    /// [`crate::cpu::optim::adam_update`] does. A `queue.write_buffer`: it takes effect at
    /// the next submit, and every update of this binding in that submit uses the last `t`
    /// set, so submit once per step. Without effect for Adagrad. Panics if `t` is 0.
    pub fn set_step(&mut self, ctx: &GpuContext, t: u64) {
        assert!(t >= 1, "optim set_step(0): Adam's steps count from 1");
        self.t = t;
        let Some(hp) = self.adam else { return };
        let bc1 = 1.0 - f64::from(hp.beta1).powi(t as i32);
        let bc2 = 1.0 - f64::from(hp.beta2).powi(t as i32);
        self.params.step = (f64::from(hp.lr) / bc1) as f32;
        self.params.bc2_sqrt = bc2.sqrt() as f32;
        self.write_uniform(ctx);
    }
}

/// Pipelines of `shaders/optim.wgsl`, created once.
pub type OptimKernels = Kernels<OptimParams>;

impl OptimKernels {
    /// Binds an update of `n` parameters from `params` with gradients from `grads` and
    /// the rule's state, after checking every tensor lies inside its buffer. Adam starts
    /// at step `t = 1`; call [`OptimBinding::set_step`] before each later step's submit.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        params: TensorRef,
        grads: TensorRef,
        rule: UpdateRule,
        n: u32,
    ) -> Result<OptimBinding, GpuError> {
        self.bind_update(ctx, params, grads, rule, u64::from(n), None)
    }

    /// Binds a lazy update of the rows `rows.ids` lists of one table (R, w): `params`,
    /// `grads` and the rule's state are the table's (R * w elements each, checked). Each
    /// listed row is updated as [`OptimKernels::bind`]'s update would, then its gradient
    /// is set to 0; the other rows are left alone. No rows until
    /// [`OptimBinding::set_rows`]; Adam starts at `t = 1` as with `bind`.
    pub fn bind_rows(
        &self,
        ctx: &GpuContext,
        params: TensorRef,
        grads: TensorRef,
        rule: UpdateRule,
        rows: TableRows,
    ) -> Result<OptimBinding, GpuError> {
        let len = u64::from(rows.table_rows) * u64::from(rows.width);
        let walked = u64::from(rows.max_rows) * u64::from(rows.width);
        if rows.width == 0 || len.max(walked) > u64::from(u32::MAX) {
            return Err(GpuError::Binding(format!(
                "optim rows: a table of {} rows of width {} (up to {} rows a step) does not \
                 fit u32 element offsets, or has width 0",
                rows.table_rows, rows.width, rows.max_rows
            )));
        }
        rows.ids
            .check(ctx, "optim row ids (max_rows)", u64::from(rows.max_rows))?;
        self.bind_update(ctx, params, grads, rule, len, Some(rows))
    }

    fn bind_update(
        &self,
        ctx: &GpuContext,
        params: TensorRef,
        grads: TensorRef,
        rule: UpdateRule,
        len: u64,
        rows: Option<TableRows>,
    ) -> Result<OptimBinding, GpuError> {
        params.check(ctx, "optim params (n)", len)?;
        grads.check(ctx, "optim grads (n)", len)?;
        let (m, v) = match rule {
            UpdateRule::Adam { m, v, .. } => {
                m.check(ctx, "adam m (n)", len)?;
                v.check(ctx, "adam v (n)", len)?;
                (m, Some(v))
            }
            UpdateRule::Adagrad { sum, .. } => {
                sum.check(ctx, "adagrad sum (n)", len)?;
                (sum, None)
            }
        };
        let mut uniform_params = OptimParams {
            // A range's n is its length (checked against u32 by the caller's type); a
            // row-wise update walks no rows until set_rows.
            n: if rows.is_some() { 0 } else { len as u32 },
            p_off: params.offset,
            g_off: grads.offset,
            m_off: m.offset,
            v_off: v.map_or(0, |v| v.offset),
            w: rows.map_or(0, |r| r.width),
            rows_off: rows.map_or(0, |r| r.ids.offset),
            table_rows: rows.map_or(0, |r| r.table_rows),
            ..Default::default()
        };
        let adam = match rule {
            UpdateRule::Adam { hp, .. } => {
                uniform_params.lr = hp.lr;
                uniform_params.beta1 = hp.beta1;
                uniform_params.beta2 = hp.beta2;
                uniform_params.one_minus_beta1 = 1.0 - hp.beta1;
                uniform_params.one_minus_beta2 = 1.0 - hp.beta2;
                uniform_params.eps = hp.eps;
                uniform_params.weight_decay = hp.weight_decay;
                Some(hp)
            }
            UpdateRule::Adagrad { hp, .. } => {
                uniform_params.lr = hp.lr;
                uniform_params.eps = hp.eps;
                uniform_params.weight_decay = hp.weight_decay;
                None
            }
        };
        let uniform = ctx.uniform_buffer("optim params", &uniform_params);
        let group = self.k.bind_group(
            ctx,
            "optim",
            &uniform,
            &[
                params.buffer,
                grads.buffer,
                m.buffer,
                v.map_or(&self.k.dummy, |v| v.buffer),
                rows.map_or(&self.k.dummy, |r| r.ids.buffer),
            ],
        );
        let mut binding = OptimBinding {
            params: uniform_params,
            adam,
            t: 1,
            max_rows: rows.map(|r| r.max_rows),
            uniform,
            group,
        };
        binding.set_step(ctx, 1);
        // set_step writes the uniform for Adam only.
        binding.write_uniform(ctx);
        Ok(binding)
    }

    /// One Adam or Adagrad step over the bound range, or the rows set (parameters and
    /// state in place).
    pub fn update(&self, pass: &mut wgpu::ComputePass, b: &OptimBinding) {
        let entry = match (b.adam.is_some(), b.max_rows.is_some()) {
            (true, false) => "adam_update",
            (false, false) => "adagrad_update",
            (true, true) => "adam_rows",
            (false, true) => "adagrad_rows",
        };
        let grid = flat_grid(b.params.n, WG, self.k.max_groups);
        self.k.run(pass, entry, &b.group, grid);
    }
}
