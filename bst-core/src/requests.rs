//! A batch of scoring requests: several users, each with its own history and features and
//! its own candidate items, in one call. This is the rank stage's shape (one user, one
//! history, hundreds to thousands of candidates), and what lets a backend compute each
//! user's history once instead of once per candidate ([`crate::shared_history`]).
//!
//! All ids are model rows (as in a [`Batch`]), not raw ids: [`crate::encode::Encoder`]
//! maps raw ids to rows (`Encoder::context` for a user; `Requests::push_context` takes its
//! result).

use crate::batch::Batch;
use crate::encode::Context;
#[cfg(test)]
use crate::encode::History;
use crate::params::VocabSizes;

/// Users and their candidates, row-major. Candidate `n` belongs to user `user[n]`; the
/// candidates of a user need not be consecutive.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Requests {
    /// History length L.
    pub seq_len: usize,
    /// Other-feature fields per user F (user fields, `hour`, `weekday`).
    pub fields: usize,
    /// (U, L) history item rows, oldest first, right-aligned, 0 = padding.
    pub hist_item: Vec<u32>,
    /// (U, L) history category rows.
    pub hist_cat: Vec<u32>,
    /// (U, L) history position buckets.
    pub hist_pos: Vec<u32>,
    /// (U, F) rows of `emb.other.weight`.
    pub other: Vec<u32>,
    /// (N) candidate item rows.
    pub target_item: Vec<u32>,
    /// (N) candidate category rows.
    pub target_cat: Vec<u32>,
    /// (N) the user of each candidate, `< U`.
    pub user: Vec<u32>,
}

/// A request that does not fit the model: what is wrong, where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scoring requests: {0}")]
pub struct RequestError(pub String);

impl Requests {
    /// No users, for a model with history length `seq_len` and `fields` other features.
    pub fn new(seq_len: usize, fields: usize) -> Requests {
        Requests {
            seq_len,
            fields,
            ..Requests::default()
        }
    }

    /// Users U.
    pub fn users(&self) -> usize {
        self.hist_item.len() / self.seq_len.max(1)
    }

    /// Candidates N, all users together.
    pub fn candidates(&self) -> usize {
        self.target_item.len()
    }

    /// Empties the batch, keeping its memory.
    pub fn clear(&mut self) {
        for v in [
            &mut self.hist_item,
            &mut self.hist_cat,
            &mut self.hist_pos,
            &mut self.other,
            &mut self.target_item,
            &mut self.target_cat,
            &mut self.user,
        ] {
            v.clear();
        }
    }

    /// Adds a user (an encoded [`Context`]) and returns its index, for
    /// [`Requests::push_candidate`].
    pub fn push_context(&mut self, ctx: &Context) -> Result<u32, RequestError> {
        let (l, f) = (self.seq_len, self.fields);
        for (what, len, want) in [
            ("hist_item", ctx.history.item.len(), l),
            ("hist_cat", ctx.history.cat.len(), l),
            ("hist_pos", ctx.history.pos.len(), l),
            ("other", ctx.other.len(), f),
        ] {
            if len != want {
                return Err(RequestError(format!(
                    "the user's {what} has {len} values, the model takes {want}"
                )));
            }
        }
        let u = self.users() as u32;
        self.hist_item.extend_from_slice(&ctx.history.item);
        self.hist_cat.extend_from_slice(&ctx.history.cat);
        self.hist_pos.extend_from_slice(&ctx.history.pos);
        self.other.extend_from_slice(&ctx.other);
        Ok(u)
    }

    /// Adds a candidate `(item row, its category row)` of user `user`.
    pub fn push_candidate(&mut self, user: u32, item: u32, cat: u32) {
        self.user.push(user);
        self.target_item.push(item);
        self.target_cat.push(cat);
    }

    /// The user's context `u`: (hist_item, hist_cat, hist_pos) each (L), other (F).
    fn user_rows(&self, u: usize) -> [&[u32]; 4] {
        let (l, f) = (self.seq_len, self.fields);
        [
            &self.hist_item[u * l..][..l],
            &self.hist_cat[u * l..][..l],
            &self.hist_pos[u * l..][..l],
            &self.other[u * f..][..f],
        ]
    }

    /// Checks that every tensor has its shape, every candidate's user exists and every id
    /// lies inside its table (`sizes`, and `pos_buckets` position buckets); the message
    /// names the first that does not.
    pub fn check(&self, sizes: VocabSizes, pos_buckets: usize) -> Result<(), RequestError> {
        let (l, f) = (self.seq_len, self.fields);
        if f != sizes.fields {
            return Err(RequestError(format!(
                "{f} other-feature fields, the model has {}",
                sizes.fields
            )));
        }
        let u = self.users();
        let n = self.candidates();
        for (what, len, want) in [
            ("hist_item (U, L)", self.hist_item.len(), u * l),
            ("hist_cat (U, L)", self.hist_cat.len(), u * l),
            ("hist_pos (U, L)", self.hist_pos.len(), u * l),
            ("other (U, F)", self.other.len(), u * f),
            ("target_cat (N)", self.target_cat.len(), n),
            ("user (N)", self.user.len(), n),
        ] {
            if len != want {
                return Err(RequestError(format!(
                    "{what} has {len} values, {want} expected for {u} user(s) and {n} candidate(s)"
                )));
            }
        }
        let bad = |what: &str, ids: &[u32], size: usize| -> Result<(), RequestError> {
            match ids.iter().position(|&i| i as usize >= size) {
                Some(p) => Err(RequestError(format!(
                    "{what}[{p}] = {} is not below its table's size {size}",
                    ids[p]
                ))),
                None => Ok(()),
            }
        };
        bad("user", &self.user, u)?;
        bad("hist_item", &self.hist_item, sizes.items)?;
        bad("target_item", &self.target_item, sizes.items)?;
        bad("hist_cat", &self.hist_cat, sizes.cats)?;
        bad("target_cat", &self.target_cat, sizes.cats)?;
        bad("hist_pos", &self.hist_pos, pos_buckets)?;
        bad("other", &self.other, sizes.other)?;
        Ok(())
    }

    /// Candidates `range` as one sample each (the user's history and features repeated),
    /// label 0: what a backend without the shared-history path scores.
    pub fn to_batch(&self, range: std::ops::Range<usize>, batch: &mut Batch) {
        batch.size = range.len();
        batch.seq_len = self.seq_len;
        batch.fields = self.fields;
        for v in [
            &mut batch.hist_item,
            &mut batch.hist_cat,
            &mut batch.hist_pos,
            &mut batch.other,
            &mut batch.target_item,
            &mut batch.target_cat,
        ] {
            v.clear();
        }
        for n in range.clone() {
            let [item, cat, pos, other] = self.user_rows(self.user[n] as usize);
            batch.hist_item.extend_from_slice(item);
            batch.hist_cat.extend_from_slice(cat);
            batch.hist_pos.extend_from_slice(pos);
            batch.other.extend_from_slice(other);
        }
        batch
            .target_item
            .extend_from_slice(&self.target_item[range.clone()]);
        batch.target_cat.extend_from_slice(&self.target_cat[range]);
        batch.label.clear();
        batch.label.resize(batch.size, 0.0);
    }

    /// The requests of a batch: consecutive samples with the same history and features
    /// become one user (a batch of one user's candidates becomes one request).
    pub fn from_batch(batch: &Batch) -> Requests {
        let (l, f) = (batch.seq_len, batch.fields);
        let mut r = Requests::new(l, f);
        for b in 0..batch.size {
            let ctx = [
                &batch.hist_item[b * l..][..l],
                &batch.hist_cat[b * l..][..l],
                &batch.hist_pos[b * l..][..l],
                &batch.other[b * f..][..f],
            ];
            let u = r.users();
            if u == 0 || r.user_rows(u - 1) != ctx {
                r.hist_item.extend_from_slice(ctx[0]);
                r.hist_cat.extend_from_slice(ctx[1]);
                r.hist_pos.extend_from_slice(ctx[2]);
                r.other.extend_from_slice(ctx[3]);
            }
            let u = r.users() as u32 - 1;
            r.push_candidate(u, batch.target_item[b], batch.target_cat[b]);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(seed: u32) -> Context {
        let history = History {
            item: vec![0, seed, seed + 1],
            cat: vec![0, 1, 2],
            pos: vec![0, 5, 3],
        };
        Context {
            history,
            other: vec![seed, 7],
        }
    }

    #[test]
    fn batches_round_trip_and_users_group() {
        let mut r = Requests::new(3, 2);
        let a = r.push_context(&ctx(1)).unwrap();
        let b = r.push_context(&ctx(4)).unwrap();
        r.push_candidate(a, 9, 1);
        r.push_candidate(a, 8, 2);
        r.push_candidate(b, 7, 3);
        assert_eq!((r.users(), r.candidates()), (2, 3));
        let mut batch = Batch::default();
        r.to_batch(0..3, &mut batch);
        assert_eq!(batch.hist_item, [0, 1, 2, 0, 1, 2, 0, 4, 5]);
        assert_eq!(batch.other, [1, 7, 1, 7, 4, 7]);
        assert_eq!(Requests::from_batch(&batch), r);
        r.to_batch(2..3, &mut batch);
        assert_eq!((batch.size, batch.target_item.clone()), (1, vec![7]));
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let sizes = VocabSizes {
            items: 10,
            cats: 3,
            other: 8,
            fields: 2,
        };
        let mut r = Requests::new(3, 2);
        let a = r.push_context(&ctx(1)).unwrap();
        r.push_candidate(a, 9, 1);
        r.check(sizes, 6).unwrap();
        let mut bad = r.clone();
        bad.user[0] = 1;
        assert!(bad.check(sizes, 6).unwrap_err().0.contains("user[0] = 1"));
        let mut bad = r.clone();
        bad.target_item[0] = 10;
        assert!(
            bad.check(sizes, 6)
                .unwrap_err()
                .0
                .contains("target_item[0] = 10")
        );
        let mut bad = r.clone();
        bad.target_cat.pop();
        assert!(
            bad.check(sizes, 6)
                .unwrap_err()
                .0
                .contains("target_cat (N)")
        );
        let e = r
            .push_context(&Context {
                other: vec![1],
                ..ctx(1)
            })
            .unwrap_err();
        assert!(e.0.contains("other has 1 values, the model takes 2"), "{e}");
    }
}
