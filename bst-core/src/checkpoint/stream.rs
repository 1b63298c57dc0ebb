//! A streaming safetensors writer whose tensors' bytes come from memory or from a byte
//! range of another file, copied through one small buffer. A latest checkpoint can so
//! carry the best epoch's parameters out of `best.safetensors` without the training
//! process holding a copy of them (issue 12: one arena is 565 MB at 100M rows).
//!
//! The file is laid out as `safetensors::serialize_to_file` lays it out (tensors ordered
//! by descending dtype alignment, then name; the header JSON padded with spaces to a
//! multiple of 8 bytes), with the header's keys sorted, so one state gives one file.

use safetensors::tensor::{Dtype, SafeTensorError, TensorInfo};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Write};

/// Bytes copied at a time from a file (a multiple of 8, for the checksum's words).
const CHUNK: usize = 1 << 20;

/// Where a tensor's bytes are.
pub(crate) enum Bytes<'a> {
    /// In memory: borrowed from an arena, or owned.
    Memory(Cow<'a, [u8]>),
    /// `len` bytes at `offset` of an open file.
    File {
        file: &'a File,
        offset: u64,
        len: usize,
    },
}

impl Bytes<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Bytes::Memory(b) => b.len(),
            Bytes::File { len, .. } => *len,
        }
    }

    /// Calls `f` with the bytes in order: whole when in memory, else in pieces of
    /// [`CHUNK`] bytes (the last one shorter) read into `buf`.
    pub(crate) fn for_each_piece(
        &self,
        buf: &mut Vec<u8>,
        mut f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        match self {
            Bytes::Memory(b) => f(b),
            &Bytes::File { file, offset, len } => {
                buf.resize(CHUNK, 0);
                let mut done = 0;
                while done < len {
                    let n = CHUNK.min(len - done);
                    read_exact_at(file, &mut buf[..n], offset + done as u64)?;
                    f(&buf[..n])?;
                    done += n;
                }
                Ok(())
            }
        }
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(mut file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// One tensor of the file to write.
pub(crate) struct Tensor<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Bytes<'a>,
}

/// The largest header safetensors accepts.
pub(crate) const MAX_HEADER: usize = 100_000_000;

/// Orders `tensors` as safetensors does and returns the header (JSON padded to a
/// multiple of 8 bytes) that describes them in that order with `meta`. The JSON's keys are
/// sorted (the tensors by name, the metadata by key), so one state always gives the
/// same file.
pub(crate) fn order_and_header(
    tensors: &mut [Tensor],
    meta: HashMap<String, String>,
) -> Result<Vec<u8>, SafeTensorError> {
    tensors.sort_by(|l, r| r.dtype.cmp(&l.dtype).then(l.name.cmp(&r.name)));
    let mut json = serde_json::Map::new();
    let meta: BTreeMap<String, String> = meta.into_iter().collect();
    json.insert("__metadata__".into(), serde_json::to_value(meta)?);
    let mut offset = 0;
    for t in tensors.iter() {
        let info = TensorInfo {
            dtype: t.dtype,
            shape: t.shape.clone(),
            data_offsets: (offset, offset + t.bytes.len()),
        };
        offset += t.bytes.len();
        json.insert(t.name.clone(), serde_json::to_value(info)?);
    }
    let mut header = serde_json::to_vec(&json)?;
    header.resize(header.len().next_multiple_of(8), b' ');
    if header.len() > MAX_HEADER {
        return Err(SafeTensorError::HeaderTooLarge);
    }
    Ok(header)
}

/// Writes the file: the header's length, the header, then every tensor's bytes in order,
/// through a buffered writer.
pub(crate) fn write_file(file: File, header: &[u8], tensors: &[Tensor]) -> io::Result<()> {
    let mut w = io::BufWriter::with_capacity(CHUNK, file);
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(header)?;
    let mut buf = Vec::new();
    for t in tensors {
        t.bytes
            .for_each_piece(&mut buf, |piece| w.write_all(piece))?;
    }
    w.into_inner().map_err(io::IntoInnerError::into_error)?;
    Ok(())
}
