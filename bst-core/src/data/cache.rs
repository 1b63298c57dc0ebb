//! A binary cache of a parsed Taobao file's store (issue 12): the vocabularies and the
//! events sorted per user (`user_start`, `item`, `time` as the store keeps it: `u32`
//! offsets from a base, or `i64` for a log spanning 2^32 s or more, [`Times`]), so that a
//! second run reads arrays instead of parsing and sorting the CSV.
//!
//! The file is keyed by the source's size, modification time and a hash of its first and
//! last MiB, and ends with a hash of everything before it: a cache whose key differs
//! (stale), whose length or hash is wrong (truncated, corrupted) or that is not one
//! (foreign) is never trusted; the caller rebuilds it with a one-line note.
//!
//! Where: `--cache DIR` (`bst-train`), by default `$XDG_CACHE_HOME/bst` or
//! `$HOME/.cache/bst`; one file per source, named by a hash of its absolute path.
//! The file is memory-mapped (`memmap2`); its checksum is checked over the map and the
//! arrays are copied out of it into the store's vectors, then the map is dropped, so no
//! heap buffer of the whole file is ever built (the mapped pages are the page cache's).

use super::{Times, Vocab};
use crate::hash::Fnv1a;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"BSTSTORE";
/// 2: times as [`Times`] (a tag, then `base` and `u32` offsets, or `i64`s); 1 had `i64`s.
const VERSION: u32 = 2;
/// Bytes hashed at each end of the source for its key.
const ENDS: u64 = 1 << 20;

/// A source's identity: size, modification time and a hash of its head and tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceKey {
    /// Bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: u128,
    /// FNV-1a of the first and last [`ENDS`] bytes.
    pub ends_hash: u64,
}

impl SourceKey {
    /// The key of the file at `path`.
    pub fn of(path: &Path) -> std::io::Result<SourceKey> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(path)?;
        let meta = f.metadata()?;
        let size = meta.len();
        let mtime_ns = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut h = fnv_start();
        let mut head = vec![0; size.min(ENDS) as usize];
        f.read_exact(&mut head)?;
        h = fnv(h, &head);
        let tail_at = size.saturating_sub(ENDS).max(head.len() as u64);
        f.seek(SeekFrom::Start(tail_at))?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail)?;
        h = fnv(h, &tail);
        Ok(SourceKey {
            size,
            mtime_ns,
            ends_hash: h,
        })
    }
}

/// What the cache holds: a parsed file's vocabularies (without the fields, which follow
/// from the user ids) and its events sorted per user.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cached {
    /// Item ids, item categories, category names and user ids (`fields` empty).
    pub vocab: Vocab,
    /// Events of user `u`: `user_start[u]..user_start[u + 1]`.
    pub user_start: Vec<u32>,
    /// Item of each event.
    pub item: Vec<u32>,
    /// Time of each event.
    pub time: Times,
}

/// Why a cache file was not used.
#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    /// There is none.
    Absent,
    /// It is another file's or an older version of this one's.
    Stale,
    /// It is in another format (written by another version of bst).
    Format(u32),
    /// It is cut short, corrupted or not a cache at all.
    Damaged(String),
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Miss::Absent => write!(f, "no cache yet"),
            Miss::Stale => write!(f, "the source changed since the cache was written"),
            Miss::Format(v) => write!(
                f,
                "the cache is in format {v}, written by another version (this one reads {VERSION})"
            ),
            Miss::Damaged(why) => write!(f, "the cache is damaged ({why})"),
        }
    }
}

/// The default cache folder: `$XDG_CACHE_HOME/bst`, else `$HOME/.cache/bst`.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("bst"))
}

/// The cache file of `source` in `dir`.
pub fn file_for(dir: &Path, source: &Path) -> PathBuf {
    let abs = source
        .canonicalize()
        .unwrap_or_else(|_| source.to_path_buf());
    let h = fnv(fnv_start(), abs.to_string_lossy().as_bytes());
    let name = source
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    dir.join(format!("{name}.{h:016x}.store"))
}

/// Writes `c` for a source of key `key` to `path` (streamed, through a temporary file and
/// a rename, so a reader never sees half a cache).
pub fn write(
    path: &Path,
    key: &SourceKey,
    vocab: &Vocab,
    user_start: &[u32],
    item: &[u32],
    time: &Times,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let file = std::fs::File::create(&tmp)?;
    let mut w = Out {
        w: std::io::BufWriter::with_capacity(1 << 20, file),
        h: Fnv::default(),
    };
    w.put(MAGIC)?;
    w.put(&VERSION.to_le_bytes())?;
    let mut k = Vec::new();
    put_key(&mut k, key);
    w.put(&k)?;
    let v = vocab;
    for ids in [&v.item_ids, &v.cat_names, &v.user_ids] {
        w.put(&(ids.len() as u64).to_le_bytes())?;
        for s in ids.iter() {
            w.put(&(s.len() as u64).to_le_bytes())?;
            w.put(s.as_bytes())?;
        }
    }
    for xs in [&v.item_cat[..], user_start, item] {
        w.u32s(xs)?;
    }
    match time {
        Times::Offsets { base, off } => {
            w.put(&0u64.to_le_bytes())?;
            w.put(&base.to_le_bytes())?;
            w.u32s(off)?;
        }
        Times::Wide(t) => {
            w.put(&1u64.to_le_bytes())?;
            w.put(&(t.len() as u64).to_le_bytes())?;
            for chunk in t.chunks(1 << 16) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
                w.put(&bytes)?;
            }
        }
    }
    let h = w.h.finish();
    use std::io::Write;
    w.w.write_all(&h.to_le_bytes())?;
    // No fsync: a cache cut short by a crash fails its checksum and is rebuilt.
    w.w.flush()?;
    drop(w);
    std::fs::rename(&tmp, path)
}

/// A writer that hashes what it writes.
struct Out {
    w: std::io::BufWriter<std::fs::File>,
    h: Fnv,
}

impl Out {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.h.update(bytes);
        self.w.write_all(bytes)
    }
    /// The length, then the values, little-endian.
    fn u32s(&mut self, xs: &[u32]) -> std::io::Result<()> {
        self.put(&(xs.len() as u64).to_le_bytes())?;
        for chunk in xs.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.put(&bytes)?;
        }
        Ok(())
    }
}

/// Streaming [`fnv`]: the same hash, whatever the pieces.
#[derive(Default)]
struct Fnv {
    h: Option<u64>,
    pending: Vec<u8>,
}

impl Fnv {
    fn update(&mut self, mut bytes: &[u8]) {
        let h = self.h.get_or_insert(fnv_start());
        if !self.pending.is_empty() {
            let need = (8 - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..need]);
            bytes = &bytes[need..];
            if self.pending.len() < 8 {
                return;
            }
            *h = fnv(*h, &self.pending);
            self.pending.clear();
        }
        let whole = bytes.len() / 8 * 8;
        *h = fnv(*h, &bytes[..whole]);
        self.pending.extend_from_slice(&bytes[whole..]);
    }
    fn finish(&self) -> u64 {
        fnv(self.h.unwrap_or(fnv_start()), &self.pending)
    }
}

/// Reads the cache at `path` if it belongs to a source of key `key` and is whole.
pub fn read(path: &Path, key: &SourceKey) -> Result<Cached, Miss> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Miss::Absent),
        Err(e) => return Err(Miss::Damaged(format!("cannot read it: {e}"))),
    };
    let damaged = |why: &str| Miss::Damaged(why.to_string());
    let len = file
        .metadata()
        .map_err(|e| Miss::Damaged(format!("cannot read it: {e}")))?
        .len();
    if len < (MAGIC.len() + 4) as u64 {
        return Err(damaged("not a bst store cache"));
    }
    // SAFETY: the map is read only while this function runs, and the cache is written
    // only through a temporary file renamed over it, never in place; a file cut short or
    // changed under us fails the checksum below (or, truncated while mapped, would raise
    // SIGBUS, as with any mapped file).
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| Miss::Damaged(format!("cannot map it: {e}")))?;
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Sequential);
    let bytes: &[u8] = &map;
    if bytes.len() < MAGIC.len() + 4 || &bytes[..8] != MAGIC {
        return Err(damaged("not a bst store cache"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(Miss::Format(version));
    }
    let mut r = Reader { b: bytes, at: 12 };
    let mut stored = Vec::new();
    put_key(&mut stored, key);
    if r.take(stored.len()).ok_or_else(|| damaged("cut short"))? != stored.as_slice() {
        return Err(Miss::Stale);
    }
    if bytes.len() < r.at + 8 {
        return Err(damaged("cut short"));
    }
    let body = bytes.len() - 8;
    let want = u64::from_le_bytes(bytes[body..].try_into().expect("8 bytes"));
    if fnv(fnv_start(), &bytes[..body]) != want {
        return Err(damaged(
            "its checksum does not match: cut short or corrupted",
        ));
    }
    let r = &mut Reader {
        b: &bytes[..body],
        at: r.at,
    };
    let parse = |r: &mut Reader| -> Option<Cached> {
        let mut lists: [Vec<String>; 3] = Default::default();
        for ids in &mut lists {
            let n = r.u64()? as usize;
            *ids = Vec::with_capacity(n.min(r.b.len()));
            for _ in 0..n {
                let len = r.u64()? as usize;
                ids.push(String::from_utf8(r.take(len)?.to_vec()).ok()?);
            }
        }
        let item_cat = r.u32s()?;
        let user_start = r.u32s()?;
        let item = r.u32s()?;
        let time = match r.u64()? {
            0 => Times::Offsets {
                base: r.u64()? as i64,
                off: r.u32s()?,
            },
            1 => {
                let n = r.u64()? as usize;
                Times::Wide(
                    r.take(n.checked_mul(8)?)?
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect(),
                )
            }
            _ => return None,
        };
        let [item_ids, cat_names, user_ids] = lists;
        (r.at == r.b.len()).then_some(Cached {
            vocab: Vocab {
                item_ids,
                item_cat,
                cat_names,
                user_ids,
                fields: Vec::new(),
            },
            user_start,
            item,
            time,
        })
    };
    let c = parse(r).ok_or_else(|| damaged("its contents do not parse"))?;
    // What the store relies on, so that a damaged file with a right checksum (there is
    // none short of tampering) still cannot index out of bounds.
    let n_items = c.vocab.item_ids.len();
    let ok = c.vocab.item_cat.len() == n_items
        && c.vocab
            .item_cat
            .iter()
            .all(|&k| (k as usize) < c.vocab.cat_names.len())
        && c.user_start.len() == c.vocab.user_ids.len() + 1
        && c.user_start.first() == Some(&0)
        && c.user_start.windows(2).all(|w| w[0] <= w[1])
        && c.user_start.last().map(|&e| e as usize) == Some(c.item.len())
        && c.time.len() == c.item.len()
        && match &c.time {
            Times::Offsets { base, .. } => base.checked_add(u32::MAX as i64).is_some(),
            Times::Wide(_) => true,
        }
        && c.item.iter().all(|&i| i >= 1 && (i as usize) < n_items);
    if !ok {
        return Err(damaged("its arrays are inconsistent"));
    }
    Ok(c)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32s(&mut self) -> Option<Vec<u32>> {
        let n = self.u64()? as usize;
        Some(
            self.take(n.checked_mul(4)?)?
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        )
    }
}

fn put_key(out: &mut Vec<u8>, key: &SourceKey) {
    put_u64(out, key.size);
    out.extend_from_slice(&key.mtime_ns.to_le_bytes());
    put_u64(out, key.ends_hash);
}

fn put_u64(out: &mut Vec<u8>, x: u64) {
    out.extend_from_slice(&x.to_le_bytes());
}

fn fnv_start() -> u64 {
    Fnv1a::new().finish()
}

/// FNV-1a over 8-byte words (and the last bytes one by one): fast enough for a GB.
fn fnv(h: u64, bytes: &[u8]) -> u64 {
    let mut f = Fnv1a::resume(h);
    f.words_le(bytes);
    f.finish()
}
