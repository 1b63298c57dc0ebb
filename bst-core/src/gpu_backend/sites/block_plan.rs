//! One block's wiring stated as data: the values of its forward and backward
//! (`Model::forward`, `Model::block_backward`), the buffer each lives in, which value
//! each call site reads and writes, and the order of the calls. The backward writes
//! most gradients over activations it no longer reads ([`GradHomes`]); [`check`] walks
//! the calls in dispatch order and rejects a gradient written over a value that is
//! still to be read, a gradient in a buffer too small for it, and an in-place write the
//! kernel does not allow. `block.rs` binds the launchers from the same tables, and the
//! backend records the calls in the order of [`FORWARD`] and [`BACKWARD`].

use super::Direction;
use crate::model::Dims;

/// A buffer of one block: its activations (`X` is the block's input, x0 or the previous
/// block's x2, owned by the caller), or a gradient scratch buffer the blocks share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Buf {
    X,
    Qkv,
    Att,
    Atty,
    A,
    Res1,
    X1,
    Ln1Mean,
    Ln1Rstd,
    Ff,
    F,
    Res2,
    X2,
    Ln2Mean,
    Ln2Rstd,
    /// The gradient carried between blocks (`buffers::GradScratch::dx`).
    Dx,
    /// Only when `d_ff < 3d` (`buffers::GradScratch::dqkv`).
    Dqkv,
}

impl Buf {
    /// The buffers each block owns (`buffers::BlockActs`, in this order), with their
    /// names and shapes: the activations of `crate::model::BlockActs`, less `ff_pre`
    /// (the backward takes LeakyReLU's signs from `ff`).
    pub const OWNED: [(Buf, &'static str); 14] = [
        (Buf::Qkv, "qkv (B, T, 3d)"),
        (Buf::Att, "att (B, h, T, T)"),
        (Buf::Atty, "atty (B, T, d)"),
        (Buf::A, "a (B, T, d)"),
        (Buf::Res1, "res1 (B, T, d)"),
        (Buf::X1, "x1 (B, T, d)"),
        (Buf::Ln1Mean, "ln1_mean (B, T)"),
        (Buf::Ln1Rstd, "ln1_rstd (B, T)"),
        (Buf::Ff, "ff (B, T, d_ff)"),
        (Buf::F, "f (B, T, d)"),
        (Buf::Res2, "res2 (B, T, d)"),
        (Buf::X2, "x2 (B, T, d)"),
        (Buf::Ln2Mean, "ln2_mean (B, T)"),
        (Buf::Ln2Rstd, "ln2_rstd (B, T)"),
    ];

    /// Where a buffer the block owns stands in [`Buf::OWNED`]; `None` for the input and
    /// the scratch.
    pub fn owned_at(self) -> Option<usize> {
        Buf::OWNED.iter().position(|&(b, _)| b == self)
    }

    /// Elements per sample.
    pub fn per_sample(self, dm: &Dims) -> usize {
        let (t, d) = (dm.t, dm.d);
        match self {
            Buf::Qkv | Buf::Dqkv => t * 3 * d,
            Buf::Att => dm.h * t * t,
            Buf::Ln1Mean | Buf::Ln1Rstd | Buf::Ln2Mean | Buf::Ln2Rstd => t,
            Buf::Ff => t * dm.dff,
            Buf::X | Buf::Atty | Buf::A | Buf::Res1 | Buf::X1 | Buf::F | Buf::Res2 => t * d,
            Buf::X2 | Buf::Dx => t * d,
        }
    }
}

/// The gradients of one block's backward, in the order they are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grad {
    /// Of the block's output x2: written by the next block or the pooling.
    DX2,
    /// Of res2 (ln2 backward).
    DRes2,
    /// Of the second residual branch f (its dropout backward).
    DBr2,
    /// Of the FFN's pre-activation (ffn2 backward, LeakyReLU' fused).
    DFfPre,
    /// Of x1 through the FFN (ffn1 backward).
    DTmp2,
    /// Of x1: `DRes2 + DTmp2`.
    DX1,
    /// Of res1 (ln1 backward).
    DRes1,
    /// Of the first residual branch a (its dropout backward).
    DBr1,
    /// Of the attention output (out backward).
    DAtty,
    /// Of qkv (attention backward).
    DQkv,
    /// Of the input through qkv (qkv backward).
    DTmp1,
    /// Of the block's input: `DRes1 + DTmp1`.
    DX,
}

impl Grad {
    /// Elements per sample: those of the value it is the gradient of.
    fn per_sample(self, dm: &Dims) -> usize {
        match self {
            Grad::DFfPre => Buf::Ff.per_sample(dm),
            Grad::DQkv => Buf::Qkv.per_sample(dm),
            _ => Buf::X.per_sample(dm),
        }
    }
}

/// A value of the block: a forward activation (in its own buffer) or a gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    Act(Buf),
    Grad(Grad),
}

use Value::{Act, Grad as G};

/// Where each gradient is written: over an activation the backward no longer reads, or
/// a scratch buffer. [`check`] proves each choice against the calls' reads and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GradHomes(pub Vec<(Grad, Buf)>);

impl GradHomes {
    /// The backend's choice. `a` and `f` are dead once the forward's residuals have read
    /// them; x2 once the next block's qkv backward (or the pooling backward) has run.
    pub fn of(dm: &Dims) -> GradHomes {
        GradHomes(vec![
            (Grad::DX2, Buf::Dx),
            (Grad::DRes2, Buf::X2),
            (Grad::DBr2, Buf::F),
            // In place: the matmul backward reads ff (dW2, leaky') before writing dinp.
            (Grad::DFfPre, Buf::Ff),
            (Grad::DTmp2, Buf::A),
            // In place: x2 = x2 + a.
            (Grad::DX1, Buf::X2),
            (Grad::DRes1, Buf::Res2),
            (Grad::DBr1, Buf::F),
            (Grad::DAtty, Buf::A),
            // ff is free by then; it holds (B, T, 3d) when d_ff >= 3d.
            (
                Grad::DQkv,
                if dm.dff >= 3 * dm.d {
                    Buf::Ff
                } else {
                    Buf::Dqkv
                },
            ),
            (Grad::DTmp1, Buf::X1),
            (Grad::DX, Buf::Dx),
        ])
    }

    /// The buffer `g` is written in (`Buf::Dx` for a gradient the table lacks, which
    /// [`check`] rejects).
    pub fn home(&self, g: Grad) -> Buf {
        let found = self.0.iter().find(|(h, _)| *h == g);
        found.map_or(Buf::Dx, |&(_, b)| b)
    }

    /// The buffer value `v` lives in.
    pub fn buf(&self, v: Value) -> Buf {
        match v {
            Act(b) => b,
            G(g) => self.home(g),
        }
    }

    /// Whether some gradient lives in `b`.
    pub fn uses(&self, b: Buf) -> bool {
        self.0.iter().any(|&(_, h)| h == b)
    }
}

/// A call site's tensors by name, as values or as buffers (`try_map` turns the one into
/// the other), and as values what the site reads and writes (`access`): in each
/// direction, `[reads] -> [writes] over [the reads a write may land on]` (those the
/// kernel reads before it writes).
macro_rules! site_args {
    (
        $(#[$doc:meta])* $name:ident { $($field:ident),* }
        forward: [$($fr:ident),*] -> [$($fw:ident),*] over [$($fo:ident),*];
        backward: [$($br:ident),*] -> [$($bw:ident),*] over [$($bo:ident),*];
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub(crate) struct $name<T> {
            $(pub $field: T,)*
        }

        impl<T: Copy> $name<T> {
            pub fn try_map<U, E>(&self, f: impl Fn(T) -> Result<U, E>) -> Result<$name<U>, E> {
                Ok($name { $($field: f(self.$field)?,)* })
            }
        }

        impl $name<Value> {
            fn access(&self, dir: Direction) -> Access {
                match dir {
                    Direction::Forward => Access {
                        reads: vec![$(self.$fr),*],
                        writes: vec![$(self.$fw),*],
                        overwrites: vec![$(self.$fo),*],
                    },
                    Direction::Backward => Access {
                        reads: vec![$(self.$br),*],
                        writes: vec![$(self.$bw),*],
                        overwrites: vec![$(self.$bo),*],
                    },
                }
            }
        }
    };
}

site_args!(
    /// `out (rows, n_out) = act(inp W^T + b)`; backward `dinp = dout W` (times leaky' of
    /// `inp` where the layer's input is a LeakyReLU output), written after the weight
    /// gradient has read `inp`: it may overwrite it (`bst_kernels::gpu::matmul::LeakyInput`).
    LinearArgs { out, inp, dout, dinp }
    forward: [inp] -> [out] over [];
    backward: [dout, inp] -> [dinp] over [inp];
);

site_args!(
    /// `out, att = attention(qkv)`; backward `dqkv` from `dout`, `att` and `qkv`.
    AttentionArgs { out, att, qkv, dout, dqkv }
    forward: [qkv] -> [out, att] over [];
    backward: [dout, att, qkv] -> [dqkv] over [];
);

site_args!(
    /// `out = x + dropout(a)`; backward `da = dout * mask`.
    ResidualArgs { out, x, a, dout, da }
    forward: [x, a] -> [out] over [];
    backward: [dout] -> [da] over [];
);

site_args!(
    /// `out = LN(inp)`, saving `mean` and `rstd`; backward `dinp` from `dout`.
    LayerNormArgs { out, mean, rstd, inp, dout, dinp }
    forward: [inp] -> [out, mean, rstd] over [];
    backward: [dout, inp, mean, rstd] -> [dinp] over [];
);

site_args!(
    /// `out = x + y`, element by element (`out` may be `x` or `y`). It has no backward:
    /// the block's backward runs it (forward).
    AddArgs { out, x, y }
    forward: [x, y] -> [out] over [x, y];
    backward: [] -> [] over [];
);

/// One block's call sites, by the values they read and write.
pub(crate) struct BlockSpec {
    pub qkv: LinearArgs<Value>,
    pub attention: AttentionArgs<Value>,
    pub out: LinearArgs<Value>,
    pub res1: ResidualArgs<Value>,
    pub ln1: LayerNormArgs<Value>,
    /// With the LeakyReLU epilogue: ff = LeakyReLU(ff_pre), no pre-activation kept.
    pub ffn1: LinearArgs<Value>,
    /// Its backward gives `DFfPre`: leaky' fused, from the signs of its input ff.
    pub ffn2: LinearArgs<Value>,
    pub res2: ResidualArgs<Value>,
    pub ln2: LayerNormArgs<Value>,
    pub sum_dx1: AddArgs<Value>,
    pub sum_dx: AddArgs<Value>,
}

/// The data flow of `Model::forward` and `Model::block_backward` for one block: each
/// site's tensors, forward activations (`Act`) and gradients (`G`).
#[rustfmt::skip]
pub(crate) const BLOCK: BlockSpec = {
    use Buf::*;
    use Grad::*;
    BlockSpec {
        qkv: LinearArgs { out: Act(Qkv), inp: Act(X), dout: G(DQkv), dinp: G(DTmp1) },
        attention: AttentionArgs {
            out: Act(Atty), att: Act(Att), qkv: Act(Qkv), dout: G(DAtty), dqkv: G(DQkv),
        },
        out: LinearArgs { out: Act(A), inp: Act(Atty), dout: G(DBr1), dinp: G(DAtty) },
        res1: ResidualArgs { out: Act(Res1), x: Act(X), a: Act(A), dout: G(DRes1), da: G(DBr1) },
        ln1: LayerNormArgs {
            out: Act(X1), mean: Act(Ln1Mean), rstd: Act(Ln1Rstd), inp: Act(Res1),
            dout: G(DX1), dinp: G(DRes1),
        },
        ffn1: LinearArgs { out: Act(Ff), inp: Act(X1), dout: G(DFfPre), dinp: G(DTmp2) },
        ffn2: LinearArgs { out: Act(F), inp: Act(Ff), dout: G(DBr2), dinp: G(DFfPre) },
        res2: ResidualArgs { out: Act(Res2), x: Act(X1), a: Act(F), dout: G(DRes2), da: G(DBr2) },
        ln2: LayerNormArgs {
            out: Act(X2), mean: Act(Ln2Mean), rstd: Act(Ln2Rstd), inp: Act(Res2),
            dout: G(DX2), dinp: G(DRes2),
        },
        sum_dx1: AddArgs { out: G(DX1), x: G(DRes2), y: G(DTmp2) },
        sum_dx: AddArgs { out: G(DX), x: G(DRes1), y: G(DTmp1) },
    }
};

/// A call site of the block with a forward and a backward.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockOp {
    Qkv,
    Attention,
    Out,
    Res1,
    Ln1,
    Ffn1,
    Ffn2,
    Res2,
    Ln2,
}

/// A call of the block's backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BackwardCall {
    Of(BlockOp),
    /// `dx1 = dres + dtmp`.
    SumDx1,
    /// The key bias gradient is exactly 0 (see `Model::block_backward`).
    ZeroKeyBias,
    /// `dx = dres' + dtmp'`.
    SumDx,
}

/// The block's forward, in dispatch order.
pub(crate) const FORWARD: [BlockOp; 9] = [
    BlockOp::Qkv,
    BlockOp::Attention,
    BlockOp::Out,
    BlockOp::Res1,
    BlockOp::Ln1,
    BlockOp::Ffn1,
    BlockOp::Ffn2,
    BlockOp::Res2,
    BlockOp::Ln2,
];

/// The block's backward, in dispatch order.
pub(crate) const BACKWARD: [BackwardCall; 12] = {
    use BackwardCall::*;
    [
        Of(BlockOp::Ln2),
        Of(BlockOp::Res2),
        Of(BlockOp::Ffn2),
        Of(BlockOp::Ffn1),
        SumDx1,
        Of(BlockOp::Ln1),
        Of(BlockOp::Res1),
        Of(BlockOp::Out),
        Of(BlockOp::Attention),
        Of(BlockOp::Qkv),
        ZeroKeyBias,
        SumDx,
    ]
};

/// What one call reads and writes; a write may land in the buffer of a value the call
/// reads only if that value is in `overwrites` (the kernel reads it first).
#[derive(Clone, Debug, Default)]
struct Access {
    reads: Vec<Value>,
    writes: Vec<Value>,
    overwrites: Vec<Value>,
}

impl Access {
    fn new(reads: &[Value], writes: &[Value]) -> Access {
        Access {
            reads: reads.to_vec(),
            writes: writes.to_vec(),
            overwrites: vec![],
        }
    }
}

impl BlockSpec {
    /// What site `op` reads and writes in direction `dir`.
    fn access(&self, op: BlockOp, dir: Direction) -> Access {
        match op {
            BlockOp::Qkv => self.qkv.access(dir),
            BlockOp::Attention => self.attention.access(dir),
            BlockOp::Out => self.out.access(dir),
            BlockOp::Res1 => self.res1.access(dir),
            BlockOp::Ln1 => self.ln1.access(dir),
            BlockOp::Ffn1 => self.ffn1.access(dir),
            BlockOp::Ffn2 => self.ffn2.access(dir),
            BlockOp::Res2 => self.res2.access(dir),
            BlockOp::Ln2 => self.ln2.access(dir),
        }
    }

    /// What a call of the backward reads and writes.
    fn backward(&self, call: BackwardCall) -> Access {
        match call {
            BackwardCall::Of(op) => self.access(op, Direction::Backward),
            BackwardCall::SumDx1 => self.sum_dx1.access(Direction::Forward),
            // Writes the gradient arena only.
            BackwardCall::ZeroKeyBias => Access::default(),
            BackwardCall::SumDx => self.sum_dx.access(Direction::Forward),
        }
    }

    /// Every call touching the block's buffers, in dispatch order, with a name: the
    /// caller writing the input, the forward, the next block (or the pooling) reading
    /// x2 and writing its gradient into dx, the backward, and the previous block (or the
    /// embedding backward) reading the input's gradient.
    fn schedule(&self) -> Vec<(String, Access)> {
        let mut steps = vec![(
            "the block's input".to_string(),
            Access::new(&[], &[Act(Buf::X)]),
        )];
        for op in FORWARD {
            steps.push((
                format!("{op:?} forward"),
                self.access(op, Direction::Forward),
            ));
        }
        steps.push((
            "the next block or the pooling".into(),
            Access::new(&[Act(Buf::X2)], &[G(Grad::DX2)]),
        ));
        for call in BACKWARD {
            let name = match call {
                BackwardCall::Of(op) => format!("{op:?} backward"),
                other => format!("{other:?}"),
            };
            steps.push((name, self.backward(call)));
        }
        steps.push((
            "the previous block or the embedding backward".into(),
            Access::new(&[G(Grad::DX)], &[]),
        ));
        steps
    }
}

/// Checks `homes` against [`BLOCK`]'s calls in dispatch order: every gradient has a home
/// large enough for it, no call writes over a value it reads unless its kernel allows it,
/// and every read finds the value it reads still in its buffer (no gradient was written
/// over an activation, or over another gradient, that is still to be read). The error
/// names the call, the value and what overwrote it.
pub(crate) fn check(homes: &GradHomes, dm: &Dims) -> Result<(), String> {
    for g in BACKWARD_GRADS {
        let found = homes.0.iter().filter(|(h, _)| *h == g).count();
        if found != 1 {
            return Err(format!("{g:?} has {found} homes in the table, not one"));
        }
        let b = homes.home(g);
        let (need, room) = (g.per_sample(dm), b.per_sample(dm));
        if room < need {
            return Err(format!(
                "{g:?} ({need} values per sample) does not fit in {b:?} ({room})"
            ));
        }
    }
    // Each buffer's value, and the call that wrote it.
    let mut held: Vec<(Buf, Value, String)> = Vec::new();
    for (name, access) in BLOCK.schedule() {
        for &r in &access.reads {
            let b = homes.buf(r);
            match held.iter().find(|(h, ..)| *h == b) {
                Some((_, v, _)) if *v == r => {}
                Some((_, v, by)) => {
                    return Err(format!(
                        "{name} reads {r:?} from {b:?}, which holds {v:?} since {by}"
                    ));
                }
                None => return Err(format!("{name} reads {r:?} before it is written")),
            }
        }
        for (i, &w) in access.writes.iter().enumerate() {
            let b = homes.buf(w);
            let clobbered = access
                .reads
                .iter()
                .find(|&&r| homes.buf(r) == b && r != w && !access.overwrites.contains(&r));
            if let Some(r) = clobbered {
                return Err(format!(
                    "{name} writes {w:?} over {r:?} in {b:?}, which it reads"
                ));
            }
            if access.writes[..i].iter().any(|&o| homes.buf(o) == b) {
                return Err(format!("{name} writes two values into {b:?}"));
            }
            held.retain(|(h, ..)| *h != b);
            held.push((b, w, name.clone()));
        }
    }
    Ok(())
}

/// Every gradient of the backward.
const BACKWARD_GRADS: [Grad; 12] = [
    Grad::DX2,
    Grad::DRes2,
    Grad::DBr2,
    Grad::DFfPre,
    Grad::DTmp2,
    Grad::DX1,
    Grad::DRes1,
    Grad::DBr1,
    Grad::DAtty,
    Grad::DQkv,
    Grad::DTmp1,
    Grad::DX,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    /// Dims with d = 16 and `d_ff`.
    fn dims(d_ff: usize) -> Dims {
        let cfg = ModelConfig {
            seq_len: 5,
            d_item: 8,
            d_cat: 4,
            d_pos: 4,
            d_ff,
            blocks: 2,
            ..ModelConfig::default()
        };
        Dims::new(&cfg, 2)
    }

    /// `homes` with `g` moved to `b`.
    fn moved(homes: &GradHomes, g: Grad, b: Buf) -> GradHomes {
        let mut h = homes.clone();
        h.0.iter_mut()
            .filter(|(x, _)| *x == g)
            .for_each(|e| e.1 = b);
        h
    }

    #[test]
    fn the_backends_homes_pass_with_dqkv_in_ff_or_in_its_scratch() {
        for d_ff in [48, 64, 20] {
            let dm = dims(d_ff);
            let homes = GradHomes::of(&dm);
            check(&homes, &dm).unwrap_or_else(|e| panic!("d_ff {d_ff}: {e}"));
            assert_eq!(homes.uses(Buf::Dqkv), d_ff < 48, "d_ff {d_ff}");
        }
    }

    /// Asserts that `check` rejects the homes with `g` moved to `b`, at `d_ff`, with an
    /// error containing `want`.
    fn assert_rejected(d_ff: usize, g: Grad, b: Buf, want: &str) {
        let dm = dims(d_ff);
        match check(&moved(&GradHomes::of(&dm), g, b), &dm) {
            Ok(()) => panic!("{g:?} in {b:?} passed the check"),
            Err(e) => assert!(e.contains(want), "{g:?} in {b:?}: {e}"),
        }
    }

    #[test]
    fn a_gradient_over_an_activation_still_to_be_read_fails() {
        // dbr2 over ff: the ffn2 backward still reads ff (its input and leaky' signs).
        assert_rejected(
            64,
            Grad::DBr2,
            Buf::Ff,
            "Ffn2 backward reads Act(Ff) from Ff",
        );
        // datty over att: the attention backward reads att.
        let want = "Attention backward reads Act(Att) from Att, which holds Grad(DAtty)";
        assert_rejected(64, Grad::DAtty, Buf::Att, want);
        // dx1 over res1: the ln1 backward reads res1 with dx1.
        assert_rejected(64, Grad::DX1, Buf::Res1, "Ln1 backward reads Act(Res1)");
    }

    #[test]
    fn a_gradient_over_a_gradient_still_to_be_read_fails() {
        // dres' over x1: the qkv backward writes dtmp' over it before the sum reads it.
        let want = "SumDx reads Grad(DRes1) from X1, which holds Grad(DTmp1) since Qkv backward";
        assert_rejected(64, Grad::DRes1, Buf::X1, want);
    }

    #[test]
    fn an_in_place_write_the_kernel_does_not_allow_fails() {
        // The LayerNorm backward reads res2 while it writes dres: not in place.
        let want = "Ln2 backward writes Grad(DRes2) over Act(Res2)";
        assert_rejected(64, Grad::DRes2, Buf::Res2, want);
    }

    #[test]
    fn a_gradient_in_a_buffer_too_small_or_without_a_home_fails() {
        // d_ff = 20 < 3d: dqkv does not fit in ff.
        let want = "DQkv (288 values per sample) does not fit in Ff (120)";
        assert_rejected(20, Grad::DQkv, Buf::Ff, want);
        let dm = dims(20);
        let mut lacking = GradHomes::of(&dm);
        lacking.0.retain(|(g, _)| *g != Grad::DTmp2);
        let err = check(&lacking, &dm).unwrap_err();
        assert!(err.contains("DTmp2 has 0 homes"), "{err}");
    }
}
