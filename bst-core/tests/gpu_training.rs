//! `GpuBackend` against `CpuBackend`: the same training steps from the same parameters
//! (dropout on) give the same parameters and loss, `predict` the same probabilities, and
//! training on a small synthetic world the same test AUC.
//!
//! The device is lavapipe (or any Vulkan adapter, software allowed). When none is found
//! the tests fail with the reason, unless `BST_SKIP_GPU_TESTS=1`, which turns each test
//! into a printed note.

mod common;

use std::sync::Arc;
use std::time::Instant;

use bst_core::backend::{Backend, CpuBackend};
use bst_core::batch::Batch;
use bst_core::config::{Config, Optimizer, Pooling};
use bst_core::data::{self, DataSource, Dataset, Samples};
use bst_core::gpu_backend::GpuBackend;
use bst_core::model::Model;
use bst_core::params::{ParamLayout, VocabSizes};
use bst_core::rank::top_k;
use bst_core::train::{predict_all, train};
use bst_kernels::gpu::GpuContext;
use common::{SIZES, gpu, random_samples};

const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

/// Asserts `|gpu - cpu| <= ATOL + RTOL * |cpu|` everywhere; prints the max error, and on
/// failure the worst tensors of `layout` (when given) and the first mismatching values.
fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], layout: Option<&ParamLayout>) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length");
    let bad_at = |i: usize| {
        let err = (gpu[i] - cpu[i]).abs();
        err.is_nan() || err > ATOL + RTOL * cpu[i].abs()
    };
    let max_err = (0..cpu.len())
        .map(|i| (gpu[i] - cpu[i]).abs())
        .fold(0.0f32, f32::max);
    let bad: Vec<usize> = (0..cpu.len()).filter(|&i| bad_at(i)).collect();
    println!(
        "{what}: {} values, max |gpu - cpu| = {max_err:.3e}",
        cpu.len()
    );
    if bad.is_empty() {
        return;
    }
    if let Some(layout) = layout {
        for spec in &layout.specs {
            let r = spec.range();
            let n_bad = r.clone().filter(|&i| bad_at(i)).count();
            if n_bad > 0 {
                let err = r.map(|i| (gpu[i] - cpu[i]).abs()).fold(0.0f32, f32::max);
                println!("  {}: {n_bad} bad, max error {err:.3e}", spec.name);
            }
        }
    }
    for &i in bad.iter().take(8) {
        let at = layout
            .and_then(|l| l.specs.iter().find(|s| s.range().contains(&i)))
            .map_or(String::new(), |s| {
                format!(" ({}[{}])", s.name, i - s.offset)
            });
        println!("  [{i}]{at} gpu {} cpu {}", gpu[i], cpu[i]);
    }
    panic!(
        "{what}: {} of {} values differ by more than {ATOL:e} + {RTOL:e} * |cpu| (max error \
         {max_err:.3e})",
        bad.len(),
        cpu.len()
    );
}

/// The shared small model (`common::small_config`) with `optimizer`.
fn small_config(blocks: usize, pooling: Pooling, optimizer: Optimizer) -> Config {
    let mut cfg = common::small_config(blocks, pooling);
    cfg.train.optimizer = optimizer;
    cfg
}

/// A CPU and a GPU backend with the same initial parameters.
fn backends(ctx: Arc<GpuContext>, cfg: &Config) -> (CpuBackend, GpuBackend) {
    let cpu = CpuBackend::new(cfg, SIZES);
    let model = Model::new(&cfg.model, SIZES);
    let gpu = GpuBackend::new(ctx, cfg, model, cpu.params.clone()).expect("GPU backend");
    (cpu, gpu)
}

/// Batches of 7, 7 and 3 samples (a partial last batch), in a shuffled order.
fn training_batches(s: &Samples) -> Vec<Batch> {
    let order: [usize; 17] = [3, 12, 0, 16, 5, 9, 1, 14, 7, 2, 10, 15, 4, 8, 13, 6, 11];
    order
        .chunks(7)
        .map(|idx| {
            let mut b = Batch::default();
            b.gather(s, idx);
            b
        })
        .collect()
}

/// The key bias (`qkv.bias[d..2d]`) shifts all of a query's scores alike, which softmax
/// ignores: both backends give it a gradient of exactly 0 (rather than f32 round-off that
/// Adam and Adagrad would amplify into steps), so it never moves, unless weight decay
/// (`train.weight_decay`) pulls it towards 0, which both backends do alike.
fn assert_key_bias_still(
    what: &str,
    params: &[f32],
    grads: &[f32],
    cpu: &CpuBackend,
    init: &[f32],
    weight_decay: f32,
) {
    let d = cpu.model.dims.d;
    let cpu_grads = cpu.grads();
    for (i, block) in cpu.model.layout.index.blocks.iter().enumerate() {
        for j in block.qkv_b.start + d..block.qkv_b.start + 2 * d {
            assert_eq!(
                (grads[j], cpu_grads[j]),
                (0.0, 0.0),
                "{what}: blocks.{i} key bias gradient"
            );
            if weight_decay == 0.0 {
                assert_eq!(
                    (params[j], cpu.params[j]),
                    (init[j], init[j]),
                    "{what}: blocks.{i} key bias"
                );
            } else {
                assert_eq!(params[j], cpu.params[j], "{what}: blocks.{i} key bias");
                assert!(
                    cpu.params[j].abs() < init[j].abs(),
                    "{what}: blocks.{i} key bias did not decay"
                );
            }
        }
    }
}

/// Three training steps on both backends; parameters, the last step's gradients and the
/// loss sum agree. With `sparse` (row-wise embedding updates) the GPU's embedding
/// gradients are consumed by the update: they must read as zeros, and the rest agree.
fn check_training_steps(
    ctx: Arc<GpuContext>,
    blocks: usize,
    pooling: Pooling,
    opt: Optimizer,
    sparse: bool,
) {
    let mut cfg = small_config(blocks, pooling, opt);
    cfg.train.sparse_embeddings = sparse;
    let what = format!("blocks {blocks}, {pooling:?}, {opt:?}, sparse {sparse}");
    check_steps_of(ctx, &cfg, &what);
}

/// Three training steps of `cfg` on both backends (see `check_training_steps`).
fn check_steps_of(ctx: Arc<GpuContext>, cfg: &Config, what: &str) {
    let batches = training_batches(&random_samples(17, &cfg.model, 7));
    check_steps_on(ctx, cfg, what, &batches);
}

/// Training steps of `cfg` on `batches` (at most `cfg.train.batch` samples each) on both
/// backends (see `check_training_steps`).
fn check_steps_on(ctx: Arc<GpuContext>, cfg: &Config, what: &str, batches: &[Batch]) {
    let (cfg, sparse) = (cfg.clone(), cfg.train.sparse_embeddings);
    let start = Instant::now();
    let (mut cpu, mut gpu) = backends(ctx, &cfg);
    let init = cpu.params.clone();
    for batch in batches {
        cpu.train_step(batch).unwrap();
        gpu.train_step(batch).unwrap();
    }
    let layout = &cpu.model.layout;
    let mut grads = gpu.read_grads().unwrap();
    let cpu_grads = cpu.grads();
    if sparse {
        let tables = 0..layout.dense_range().start;
        assert!(
            grads[tables.clone()].iter().all(|&g| g == 0.0),
            "{what}: the row-wise updates left embedding gradients"
        );
        grads[tables.clone()].copy_from_slice(&cpu_grads[tables]);
    }
    assert_close(&format!("{what}: last gradients"), &grads, &cpu_grads, None);
    let params = gpu.read_params().unwrap();
    assert_key_bias_still(what, &params, &grads, &cpu, &init, cfg.train.weight_decay);
    assert_close(
        &format!("{what}: parameters after 3 steps"),
        &params,
        &cpu.params,
        Some(layout),
    );
    let (gpu_state, cpu_state) = (
        gpu.read_optim_state().expect("GPU optimiser state"),
        cpu.read_optim_state().expect("CPU optimiser state"),
    );
    assert_eq!(gpu_state.steps, 3, "{what}: optimiser steps");
    assert_eq!(gpu_state.state.kind(), cpu_state.state.kind());
    for ((name, g), (_, c)) in gpu_state
        .state
        .arenas()
        .iter()
        .zip(cpu_state.state.arenas())
    {
        assert_close(&format!("{what}: {name}"), g, c, Some(layout));
    }
    let (gpu_sum, gpu_n) = gpu.take_loss().unwrap();
    let (cpu_sum, cpu_n) = cpu.take_loss().unwrap();
    println!("{what}: loss sum gpu {gpu_sum:.7} cpu {cpu_sum:.7}");
    assert_eq!(gpu_n, cpu_n, "{what}: steps in the loss sum");
    assert!(
        (gpu_sum - cpu_sum).abs() <= 1e-5 * (1.0 + cpu_sum.abs()),
        "{what}: loss sum gpu {gpu_sum} cpu {cpu_sum}"
    );
    assert_eq!(
        gpu.take_loss().unwrap(),
        (0.0, 0),
        "take_loss empties the sum"
    );
    println!("{what}: {:.2} s", start.elapsed().as_secs_f64());
}

#[test]
fn three_adam_and_adagrad_steps_match_the_cpu_for_every_pooling_and_depth() {
    let Some(ctx) = gpu() else { return };
    for opt in [Optimizer::Adam, Optimizer::Adagrad] {
        for blocks in [1, 2] {
            for pooling in [Pooling::Target, Pooling::Mean, Pooling::Flatten] {
                check_training_steps(ctx.clone(), blocks, pooling, opt, false);
            }
        }
        // The WDL(+Seq) baseline: no block, the embeddings pooled directly.
        check_training_steps(ctx.clone(), 0, Pooling::Mean, opt, false);
    }
}

/// With d_ff >= 3d the GPU backward keeps dqkv in the block's dead `ff` activation
/// (the small config's d_ff = d = 16 takes the scratch buffer instead); two blocks, so the
/// gradient also crosses a block through the reused buffers.
#[test]
fn three_steps_match_the_cpu_when_dqkv_lives_in_the_ffn_activation() {
    let Some(ctx) = gpu() else { return };
    for opt in [Optimizer::Adam, Optimizer::Adagrad] {
        let mut cfg = small_config(2, Pooling::Flatten, opt);
        cfg.model.d_ff = 3 * cfg.model.d();
        cfg.validate().expect("a valid config");
        check_steps_of(ctx.clone(), &cfg, &format!("d_ff = 3d, {opt:?}"));
    }
}

/// Batches long enough that the linear layers split their weight and bias gradients over
/// the rows (`bst_kernels::gpu::matmul::row_splits`), every layer through the one shared
/// scratch: 520 samples are 3120 block rows (12 splits) and 520 MLP rows (2 splits); the
/// partial last batch of 130 takes 3 and 1 splits after two full ones.
#[test]
fn three_steps_with_split_gradient_reductions_match_the_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut cfg = small_config(2, Pooling::Mean, Optimizer::Adam);
    cfg.train.batch = 520;
    cfg.validate().expect("a valid config");
    let samples = random_samples(1170, &cfg.model, 13);
    let idx: Vec<usize> = (0..1170).map(|i| (i * 7) % 1170).collect();
    let batches: Vec<Batch> = idx
        .chunks(520)
        .map(|chunk| {
            let mut b = Batch::default();
            b.gather(&samples, chunk);
            b
        })
        .collect();
    check_steps_on(ctx, &cfg, "split reductions", &batches);
}

#[test]
fn three_steps_with_sparse_embedding_updates_match_the_cpu() {
    let Some(ctx) = gpu() else { return };
    for opt in [Optimizer::Adam, Optimizer::Adagrad] {
        check_training_steps(ctx.clone(), 1, Pooling::Target, opt, true);
    }
}

/// L2 regularisation (`model.emb_l2` on the tables, `train.weight_decay` on the rest)
/// takes the same steps on both backends, for Adam and Adagrad, with dense and row-wise
/// table updates; and it changes them (a backend that ignored it would fail here).
#[test]
fn three_steps_with_l2_regularisation_match_the_cpu() {
    let Some(ctx) = gpu() else { return };
    for opt in [Optimizer::Adam, Optimizer::Adagrad] {
        for sparse in [false, true] {
            let mut cfg = small_config(1, Pooling::Target, opt);
            cfg.train.sparse_embeddings = sparse;
            cfg.model.emb_l2 = 0.05;
            cfg.train.weight_decay = 0.01;
            cfg.validate().expect("a valid config");
            let what = format!("L2, {opt:?}, sparse {sparse}");
            check_steps_of(ctx.clone(), &cfg, &what);
            // Without each coefficient the CPU's parameters differ where it applies.
            let batches = training_batches(&random_samples(17, &cfg.model, 7));
            let run = |cfg: &Config| {
                let mut cpu = CpuBackend::new(cfg, SIZES);
                for b in &batches {
                    cpu.train_step(b).unwrap();
                }
                cpu.params
            };
            let with = run(&cfg);
            let layout = ParamLayout::new(&cfg.model, SIZES);
            let (tables, dense) = (0..layout.dense_range().start, layout.dense_range());
            // (Each changes every later value, so only its own part is checked.)
            let mut no_emb = cfg.clone();
            no_emb.model.emb_l2 = 0.0;
            let p = run(&no_emb);
            assert_ne!(p[tables.clone()], with[tables.clone()], "{what}: emb_l2");
            let mut no_wd = cfg.clone();
            no_wd.train.weight_decay = 0.0;
            let p = run(&no_wd);
            assert_ne!(p[dense.clone()], with[dense], "{what}: weight_decay");
        }
    }
}

/// A learning rate set between steps (`Backend::set_lr`, the per-epoch schedule of
/// `train.lr_decay`), with the tables at `train.emb_lr_scale` times it, takes effect on
/// both backends alike, for Adam and Adagrad, dense and row-wise; and each changes the
/// steps (a backend that ignored one would fail here).
#[test]
fn a_learning_rate_changed_between_steps_matches_the_cpu() {
    let Some(ctx) = gpu() else { return };
    for opt in [Optimizer::Adam, Optimizer::Adagrad] {
        for sparse in [false, true] {
            let mut cfg = small_config(1, Pooling::Target, opt);
            cfg.train.sparse_embeddings = sparse;
            cfg.train.emb_lr_scale = Some(2.5);
            let what = format!("set_lr, {opt:?}, sparse {sparse}");
            let batches = training_batches(&random_samples(17, &cfg.model, 7));
            let (mut cpu, mut gpu) = backends(ctx.clone(), &cfg);
            for (b, scale) in batches.iter().zip([1.0, 0.25, 3.0]) {
                let lr = cfg.train.lr() * scale;
                cpu.set_lr(lr);
                gpu.set_lr(lr);
                cpu.train_step(b).unwrap();
                gpu.train_step(b).unwrap();
            }
            let layout = &cpu.model.layout;
            assert_close(
                &what,
                &gpu.read_params().unwrap(),
                &cpu.params,
                Some(layout),
            );
            let mut constant = CpuBackend::new(&cfg, SIZES);
            for b in &batches {
                constant.train_step(b).unwrap();
            }
            assert_ne!(
                constant.params, cpu.params,
                "{what}: the rate changed nothing"
            );
            let mut unscaled_cfg = cfg.clone();
            unscaled_cfg.train.emb_lr_scale = Some(1.0);
            let mut unscaled = CpuBackend::new(&unscaled_cfg, SIZES);
            for b in &batches {
                unscaled.train_step(b).unwrap();
            }
            let tables = 0..layout.dense_range().start;
            assert_ne!(
                unscaled.params[tables.clone()],
                constant.params[tables],
                "{what}: emb_lr_scale changed nothing"
            );
        }
    }
}

/// A step handed segments prepared from another batch of the same size rebuilds them
/// from its own batch (they would put gradients on the wrong rows): the result is the
/// plain step's, bit for bit. With the right preparation it is the same too.
#[test]
fn a_step_ignores_segments_prepared_from_another_batch() {
    let Some(ctx) = gpu() else { return };
    let cfg = small_config(1, Pooling::Target, Optimizer::Adam);
    let (_, mut plain) = backends(ctx.clone(), &cfg);
    let (_, mut handed) = backends(ctx, &cfg);
    let s = random_samples(14, &cfg.model, 21);
    let (a, b) = (Batch::from_range(&s, 0..7), Batch::from_range(&s, 7..14));
    let prep = handed.batch_preparer().expect("the GPU prepares batches");
    plain.train_step(&a).unwrap();
    handed
        .train_step_prepared(&a, Some(&mut prep.prepare(&a)))
        .unwrap();
    plain.train_step(&b).unwrap();
    handed
        .train_step_prepared(&b, Some(&mut prep.prepare(&a)))
        .unwrap(); // the wrong batch's
    assert!(
        plain.read_params().unwrap() == handed.read_params().unwrap(),
        "the step used the other batch's segments"
    );
}

/// The prefetch producer prepares each batch into the preparation of an earlier one
/// (`prepare_into`): batches of 7, 7, 3, then 3, 7, 7 samples, each prepared into the one
/// spent preparation, train exactly as steps that segment their batch themselves.
#[test]
fn steps_on_recycled_preparations_match_plain_steps_bit_for_bit() {
    let Some(ctx) = gpu() else { return };
    let mut cfg = small_config(1, Pooling::Mean, Optimizer::Adam);
    cfg.train.sparse_embeddings = true; // the update rows come from the segments too
    let (_, mut plain) = backends(ctx.clone(), &cfg);
    let (_, mut handed) = backends(ctx, &cfg);
    let batches = training_batches(&random_samples(17, &cfg.model, 23));
    let prep = handed.batch_preparer().expect("the GPU prepares batches");
    let mut spent = prep.prepare(&batches[2]);
    for batch in batches.iter().chain(batches.iter().rev()) {
        prep.prepare_into(batch, &mut spent);
        plain.train_step(batch).unwrap();
        handed.train_step_prepared(batch, Some(&mut spent)).unwrap();
    }
    assert!(
        plain.read_params().unwrap() == handed.read_params().unwrap(),
        "steps on recycled preparations differ from plain steps"
    );
}

#[test]
fn a_run_resumed_from_params_and_optimiser_state_continues_bit_for_bit() {
    let Some(ctx) = gpu() else { return };
    for opt in [Optimizer::Adam, Optimizer::Adagrad] {
        let cfg = small_config(2, Pooling::Mean, opt);
        let model = Model::new(&cfg.model, SIZES);
        let init = model.layout.init(cfg.train.seed);
        let fresh = |params: Vec<f32>| {
            GpuBackend::new(ctx.clone(), &cfg, model.clone(), params).expect("GPU backend")
        };
        let batches = training_batches(&random_samples(17, &cfg.model, 7));
        let mut whole = fresh(init.clone());
        for batch in &batches {
            whole.train_step(batch).unwrap();
        }
        let mut first = fresh(init);
        for batch in &batches[..2] {
            first.train_step(batch).unwrap();
        }
        let state = first.read_optim_state().expect("optimiser state");
        let mut resumed = fresh(first.read_params().unwrap());
        resumed
            .write_optim_state(&state)
            .expect("a state of this run");
        assert_eq!(resumed.steps(), 2);
        resumed.train_step(&batches[2]).unwrap();
        assert!(
            resumed.read_params().unwrap() == whole.read_params().unwrap(),
            "{opt:?}: the resumed run's parameters differ from the uninterrupted run's"
        );
        let other = small_config(2, Pooling::Mean, Optimizer::Adagrad);
        if opt == Optimizer::Adam {
            let mut adagrad = GpuBackend::new(
                ctx.clone(),
                &other,
                model.clone(),
                whole.read_params().unwrap(),
            )
            .expect("GPU backend");
            let e = adagrad.write_optim_state(&state).unwrap_err().to_string();
            assert!(e.contains("Adam's but this run uses Adagrad"), "{e}");
        }
    }
}

#[test]
fn predict_matches_the_cpu_in_eval_mode_and_leaves_the_loss_alone() {
    let Some(ctx) = gpu() else { return };
    for (blocks, pooling) in [(1, Pooling::Target), (2, Pooling::Flatten)] {
        let cfg = small_config(blocks, pooling, Optimizer::Adam);
        let what = format!("blocks {blocks}, {pooling:?}");
        let (mut cpu, mut gpu) = backends(ctx.clone(), &cfg);
        let samples = random_samples(23, &cfg.model, 11);
        for batch in training_batches(&samples).iter().take(2) {
            cpu.train_step(batch).unwrap();
            gpu.train_step(batch).unwrap();
        }
        // Eval batches of 9, 9, 5: larger than the training batch, then partial.
        let want = predict_all(&mut cpu, &samples, cfg.train.eval_batch).unwrap();
        let got = predict_all(&mut gpu, &samples, cfg.train.eval_batch).unwrap();
        assert_close(&format!("{what}: probabilities"), &got, &want, None);
        // Predicting added nothing to the training loss.
        let (gpu_sum, gpu_n) = gpu.take_loss().unwrap();
        let (cpu_sum, _) = cpu.take_loss().unwrap();
        assert_eq!(gpu_n, 2);
        assert!((gpu_sum - cpu_sum).abs() <= 1e-5 * (1.0 + cpu_sum.abs()));
        // Parameters written are read back unchanged, and predict uses them.
        let params = cpu.read_params().unwrap();
        gpu.write_params(&params).unwrap();
        assert_eq!(
            gpu.read_params().unwrap(),
            params,
            "{what}: write_params round trip"
        );
        let got = predict_all(&mut gpu, &samples, cfg.train.eval_batch).unwrap();
        assert_close(
            &format!("{what}: probabilities after write_params"),
            &got,
            &want,
            None,
        );
    }
}

/// Every hot readback (probabilities, top-k pairs, the loss) shares one staging buffer:
/// sizes that grow and shrink between calls, with steps and loss reads between, must read
/// exactly the current call's values, never a longer earlier call's.
#[test]
fn readbacks_of_changing_sizes_read_only_the_current_call() {
    let Some(ctx) = gpu() else { return };
    let cfg = small_config(1, Pooling::Mean, Optimizer::Adam);
    let (mut cpu, mut gpu) = backends(ctx, &cfg);
    let samples = random_samples(23, &cfg.model, 13);
    let train = training_batches(&samples);
    for (i, n) in [9, 1, 5, 9, 2, 7].into_iter().enumerate() {
        let what = format!("call {i}, {n} samples");
        let batch = Batch::from_range(&samples, 2 * i..2 * i + n);
        let mut got = vec![f32::NAN; 9];
        gpu.predict(&batch, &mut got).unwrap();
        assert!(got[n..].iter().all(|p| p.is_nan()), "{what}: wrote past B");
        let mut want = vec![0.0; n];
        cpu.predict(&batch, &mut want).unwrap();
        assert_close(&format!("{what}: probabilities"), &got[..n], &want, None);
        // k below, at and above B, changing back and forth: the device's selection of its
        // own probabilities, exactly the host's.
        for k in [3, 1, n, 2 * n, 3] {
            assert_eq!(
                gpu.predict_top_k(&batch, k).unwrap(),
                top_k(&got[..n], k),
                "{what}: top {k}"
            );
        }
        let step = &train[i % train.len()];
        gpu.train_step(step).unwrap();
        cpu.train_step(step).unwrap();
        let ((gpu_sum, gpu_n), (cpu_sum, cpu_n)) =
            (gpu.take_loss().unwrap(), cpu.take_loss().unwrap());
        assert_eq!(gpu_n, cpu_n);
        assert!(
            (gpu_sum - cpu_sum).abs() <= 1e-5 * (1.0 + cpu_sum.abs()),
            "{what}: loss {gpu_sum} vs {cpu_sum}"
        );
    }
}

/// The whole loop (`train`: steps, take_loss, predict, read_params, write_params) on a
/// small world and model, d = 32 and MLP 64-32, 2 epochs of 38 steps. lavapipe on two
/// cores trains at about 320 samples/s: about 65 s here (the CPU takes 1.5 s).
#[test]
fn training_on_the_gpu_reaches_the_cpu_test_auc() {
    let Some(ctx) = gpu() else { return };
    let mut cfg = Config::default();
    cfg.data.synthetic_users = 300;
    cfg.model.mlp = vec![64, 32];
    cfg.model.d_ff = 64;
    (cfg.model.d_item, cfg.model.d_cat, cfg.model.d_pos) = (16, 8, 8);
    cfg.model.heads = 4;
    cfg.train.lr = Some(3e-3);
    cfg.train.emb_lr_scale = Some(10.0); // the tables at 3e-2, as by default
    cfg.train.epochs = 2;
    let ds = data::load(&DataSource::Synthetic, &cfg).expect("synthetic data");
    println!(
        "synthetic: {} train, {} valid, {} test samples",
        ds.train.len(),
        ds.valid.len(),
        ds.test.len()
    );
    assert_same_test_auc(ctx, &cfg, &ds, 0.55);
}

/// Trains `cfg` on `ds` on the CPU and on the GPU from the same initial parameters: the
/// CPU must reach a test AUC above `min_auc` (the model learned), and the GPU the same
/// test AUC within 0.005.
fn assert_same_test_auc(ctx: Arc<GpuContext>, cfg: &Config, ds: &Dataset, min_auc: f64) {
    let mut cpu = CpuBackend::new(cfg, ds.vocab.sizes());
    let model = Model::new(&cfg.model, ds.vocab.sizes());
    let mut gpu = GpuBackend::new(ctx, cfg, model, cpu.params.clone()).expect("GPU backend");
    let report = |backend: &mut dyn Backend| {
        let start = Instant::now();
        let r = train(backend, ds, &cfg.train, &mut |_| {}).expect("training runs");
        println!(
            "{}: test {} (best epoch {}), {:.0} samples/s, {:.1} s",
            r.device,
            r.test,
            r.best_epoch,
            r.train_samples_per_sec,
            start.elapsed().as_secs_f64()
        );
        r
    };
    let on_cpu = report(&mut cpu);
    assert!(
        on_cpu.test.auc > min_auc,
        "the model learned little: {}",
        on_cpu.test
    );
    let on_gpu = report(&mut gpu);
    assert!(on_gpu.device.starts_with("gpu: "), "{}", on_gpu.device);
    println!("oracle test AUC {:?}", on_cpu.oracle_test_auc);
    assert!(
        (on_gpu.test.auc - on_cpu.test.auc).abs() <= 0.005,
        "test AUC gpu {:.4} cpu {:.4}",
        on_gpu.test.auc,
        on_cpu.test.auc
    );
}

#[test]
fn a_batch_too_large_for_a_binding_names_the_tensor_and_the_knob() {
    let Some(ctx) = gpu() else { return };
    // T = 41 and 4 heads of width 4: the attention probabilities (B, h, T, T) are the
    // largest activation, 6724 floats per sample.
    let mut cfg = small_config(1, Pooling::Target, Optimizer::Adam);
    cfg.model.seq_len = 40;
    cfg.model.heads = 4;
    let l = &ctx.limits;
    let limit = l
        .max_storage_buffer_binding_size
        .min(l.max_buffer_size)
        .min(4 * u64::from(u32::MAX));
    cfg.train.eval_batch = (limit / (4 * 4 * 41 * 41)) as usize + 1;
    let model = Model::new(&cfg.model, SIZES);
    let params = model.layout.init(0);
    let start = Instant::now();
    let e = GpuBackend::new(ctx, &cfg, model, params)
        .err()
        .expect("the attention probabilities exceed the binding limit")
        .to_string();
    println!("{e} ({:.2} s)", start.elapsed().as_secs_f64());
    for part in [
        "blocks.0.att (B, h, T, T)",
        "max_storage_buffer_binding_size",
        &format!("({limit} bytes)"),
        "lower train.batch and train.eval_batch",
    ] {
        assert!(e.contains(part), "`{part}` missing from: {e}");
    }
}

/// An item vocabulary whose table (and so the parameter arena) exceeds one binding is
/// refused before anything is allocated, naming the arena, the sizes and what to change.
#[test]
fn an_embedding_table_larger_than_a_binding_is_refused_clearly() {
    let Some(ctx) = gpu() else { return };
    let cfg = small_config(1, Pooling::Target, Optimizer::Adam);
    let l = &ctx.limits;
    let limit = l
        .max_storage_buffer_binding_size
        .min(l.max_buffer_size)
        .min(4 * u64::from(u32::MAX));
    let items = (limit / (4 * cfg.model.d_item as u64)) as usize + 1;
    let model = Model::new(&cfg.model, VocabSizes { items, ..SIZES });
    let params = vec![0.0; model.layout.total];
    let e = GpuBackend::new(ctx, &cfg, model, params)
        .err()
        .expect("the item table exceeds the binding limit")
        .to_string();
    println!("{e}");
    for part in [
        "the parameter arena",
        "max_storage_buffer_binding_size",
        &format!("({limit} bytes)"),
        "use smaller embedding widths, vocabularies or MLP",
    ] {
        assert!(e.contains(part), "`{part}` missing from: {e}");
    }
}

/// The same on MovieLens-100k (fetched by scripts/fetch-data.sh; missing data fails the
/// test unless BST_SKIP_ML100K=1). A narrow model and one epoch keep lavapipe, the
/// software driver of CI, within minutes; the path is the real one (vocabularies of
/// 1,683 items and 1,858 other-feature rows, padded histories, a partial last batch).
#[test]
fn training_on_the_gpu_reaches_the_cpu_test_auc_on_ml100k() {
    let Some(ctx) = gpu() else { return };
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/ml-100k");
    if !dir.join("ml-100k.inter").exists() {
        if std::env::var("BST_SKIP_ML100K").is_ok_and(|v| v == "1") {
            eprintln!("note: BST_SKIP_ML100K=1, skipping the ml-100k GPU training test");
            return;
        }
        panic!(
            "{} is missing: run scripts/fetch-data.sh (or set BST_SKIP_ML100K=1)",
            dir.display()
        );
    }
    let mut cfg = Config::default();
    (cfg.model.d_item, cfg.model.d_cat, cfg.model.d_pos) = (8, 4, 4);
    cfg.model.heads = 2;
    cfg.model.d_ff = 32;
    cfg.model.mlp = vec![64, 32];
    cfg.train.lr = Some(3e-3);
    cfg.train.emb_lr_scale = Some(10.0); // the tables at 3e-2, as by default
    cfg.train.epochs = 1;
    let ds = data::load(&DataSource::Recbole(dir), &cfg).expect("ml-100k loads");
    assert_same_test_auc(ctx, &cfg, &ds, 0.70);
}
