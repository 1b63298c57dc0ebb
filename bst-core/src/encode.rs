//! From raw ids to model rows, for scoring with a checkpoint: a user's feature tokens and
//! history of `(item id, time)` become one sample context (spec 1.1 and 1.2), and each
//! candidate item one sample. Unknown ids map to index 0 (spec section 1: padding or
//! unknown) and are counted.

use crate::config::ModelConfig;
use crate::data::samples::{CONTEXT_FIELDS, hour_and_weekday};
pub use crate::data::samples::{Context, History};
use crate::data::{Samples, Vocab};
use std::collections::HashMap;

/// Ids the vocabularies did not know, each scored as index 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unknown {
    /// Unknown candidate items.
    pub targets: usize,
    /// Unknown history items (their slots left as padding).
    pub history: usize,
    /// Unknown user feature values.
    pub features: usize,
}

impl Unknown {
    /// All unknown ids.
    pub fn total(&self) -> usize {
        self.targets + self.history + self.features
    }
}

impl std::fmt::Display for Unknown {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{} target item(s), {} history item(s), {} user feature value(s)",
            self.targets, self.history, self.features
        )
    }
}

/// Maps raw ids to indices with a checkpoint's vocabularies and model config.
pub struct Encoder<'a> {
    vocab: &'a Vocab,
    model: &'a ModelConfig,
    items: HashMap<&'a str, u32>,
    /// Token -> local index of each user field (every field but the context ones).
    fields: Vec<HashMap<&'a str, u32>>,
}

impl<'a> Encoder<'a> {
    /// Fails when the vocabulary does not end with the context fields `hour`, `weekday`.
    pub fn new(vocab: &'a Vocab, model: &'a ModelConfig) -> Result<Encoder<'a>, String> {
        let n = vocab.fields.len();
        let names: Vec<&str> = vocab.fields.iter().map(|f| f.name.as_str()).collect();
        if n < 2 || names[n - 2..] != CONTEXT_FIELDS {
            return Err(format!(
                "the vocabulary's fields {names:?} do not end with the context fields {CONTEXT_FIELDS:?}"
            ));
        }
        let index = |tokens: &'a [String]| -> HashMap<&'a str, u32> {
            // Index 0 is "unknown"; the first of repeated tokens wins.
            let mut m = HashMap::with_capacity(tokens.len());
            for (i, t) in tokens.iter().enumerate().skip(1) {
                m.entry(t.as_str()).or_insert(i as u32);
            }
            m
        };
        Ok(Encoder {
            items: index(&vocab.item_ids),
            fields: vocab.fields[..n - 2]
                .iter()
                .map(|f| index(&f.tokens))
                .collect(),
            vocab,
            model,
        })
    }

    /// Names of the user fields, in sample order (the context fields excluded).
    pub fn user_fields(&self) -> Vec<&'a str> {
        let n = self.fields.len();
        self.vocab.fields[..n]
            .iter()
            .map(|f| f.name.as_str())
            .collect()
    }

    /// The index of a raw item id, or `None` when the vocabulary does not know it.
    pub fn item(&self, raw: &str) -> Option<u32> {
        self.items.get(raw).copied()
    }

    /// The context of a user given by `(field name, token)` pairs (fields left out are
    /// unknown) and a history of `(raw item id, unix time)` oldest first, for targets at
    /// `time`. Unknown tokens and items count in `unknown`; an unknown history item leaves
    /// its slot as padding. Fails on a field name the checkpoint does not have.
    pub fn context(
        &self,
        user: &[(String, String)],
        history: &[(String, i64)],
        time: i64,
        unknown: &mut Unknown,
    ) -> Result<Context, String> {
        let fields = &self.vocab.fields;
        let mut other: Vec<u32> = fields[..self.fields.len()]
            .iter()
            .map(|f| f.offset as u32)
            .collect();
        for (name, token) in user {
            let Some(f) = fields[..self.fields.len()]
                .iter()
                .position(|f| &f.name == name)
            else {
                return Err(if CONTEXT_FIELDS.contains(&name.as_str()) {
                    format!("`{name}` is computed from the target time; leave it out")
                } else {
                    format!(
                        "unknown user field `{name}`: the checkpoint's user fields are {}",
                        self.user_fields().join(", ")
                    )
                });
            };
            let local = self.fields[f].get(token.as_str()).copied().unwrap_or(0);
            unknown.features += (local == 0) as usize;
            other[f] = (fields[f].offset as u32) + local;
        }
        let (hour, weekday) = hour_and_weekday(time);
        let n = fields.len();
        other.push(fields[n - 2].offset as u32 + hour);
        other.push(fields[n - 1].offset as u32 + weekday);

        // An unknown history item is counted and its slot left as padding.
        let event = |(raw, t): &(String, i64)| {
            let item = self.item(raw);
            unknown.history += item.is_none() as usize;
            Some((item?, *t))
        };
        let history = History::of(self.model, &self.vocab.item_cat, time, history, event);
        Ok(Context { history, other })
    }

    /// The category row of item row `item` (0 for a row past the vocabulary).
    pub fn item_cat(&self, item: u32) -> u32 {
        self.vocab.item_cat.get(item as usize).copied().unwrap_or(0)
    }

    /// Appends the sample of `ctx` with target item index `item` (0 = unknown), label 0.
    pub fn push(&self, s: &mut Samples, ctx: &Context, item: u32) {
        ctx.push(s, (item, self.vocab.item_cat[item as usize]), 0.0, 0);
    }

    /// Empty samples of this model's shape.
    pub fn samples(&self) -> Samples {
        Samples::new(self.model.seq_len, self.vocab.fields.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::data::{self, DataSource};

    #[test]
    fn encoded_samples_match_the_built_ones() {
        // Rebuild a test sample of the synthetic data from its raw ids.
        let mut cfg = Config::default();
        cfg.data.synthetic_users = 20;
        cfg.model.seq_len = 5;
        let ds = data::load(&DataSource::Synthetic, &cfg).unwrap();
        let log = data::synthetic::generate(&data::synthetic::SyntheticSpec::new(20, 5, 0));
        let enc = Encoder::new(&ds.vocab, &cfg.model).unwrap();
        // User 0's events in time order; its last is its last test sample.
        let mut events: Vec<_> = log.interactions.iter().filter(|i| i.user == 0).collect();
        events.sort_by_key(|i| i.time);
        let (target, before) = events.split_last().unwrap();
        let raw = |i: u32| ds.vocab.item_ids[i as usize].clone();
        let history: Vec<(String, i64)> = before.iter().map(|i| (raw(i.item), i.time)).collect();
        let user: Vec<(String, String)> = enc
            .user_fields()
            .iter()
            .enumerate()
            .map(|(f, name)| {
                let local = log.user_features[0][f] as usize;
                (name.to_string(), ds.vocab.fields[f].tokens[local].clone())
            })
            .collect();
        let mut unknown = Unknown::default();
        let ctx = enc
            .context(&user, &history, target.time, &mut unknown)
            .unwrap();
        let mut s = enc.samples();
        enc.push(&mut s, &ctx, enc.item(&raw(target.item)).unwrap());
        assert_eq!(unknown, Unknown::default());
        let t = &ds.test.samples();
        let i = (0..t.len()).rev().find(|&i| t.user[i] == 0).unwrap();
        let (l, f) = (t.seq_len, t.fields);
        assert_eq!(s.hist_item, t.hist_item[i * l..(i + 1) * l]);
        assert_eq!(s.hist_cat, t.hist_cat[i * l..(i + 1) * l]);
        assert_eq!(s.hist_pos, t.hist_pos[i * l..(i + 1) * l]);
        assert_eq!(s.target_item[0], t.target_item[i]);
        assert_eq!(s.target_cat[0], t.target_cat[i]);
        assert_eq!(s.other, t.other[i * f..(i + 1) * f]);

        // Unknown ids map to 0 and are counted; an unknown field name is an error.
        let user = vec![("age".to_string(), "age_99".to_string())];
        let history = vec![("nope".to_string(), 0), (raw(3), 10)];
        let ctx = enc.context(&user, &history, 100, &mut unknown).unwrap();
        assert_eq!(ctx.history.item[3..], [0, 3]);
        assert_eq!(unknown.history, 1);
        assert_eq!(unknown.features, 1);
        let e = enc
            .context(&[("agee".into(), "x".into())], &[], 0, &mut unknown)
            .unwrap_err();
        assert!(e.contains("unknown user field `agee`"), "{e}");
        let e = enc
            .context(&[("hour".into(), "3".into())], &[], 0, &mut unknown)
            .unwrap_err();
        assert!(e.contains("computed from the target time"), "{e}");
    }
}
