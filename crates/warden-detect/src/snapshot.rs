//! The engine's state on disk: counters, distinct sets and bans, so that they survive a
//! restart or a graceful upgrade ([`Engine::snapshot`](crate::Engine::snapshot),
//! [`Engine::restore`](crate::Engine::restore)).
//!
//! **Format** (version [`VERSION`], little-endian throughout): an 22-byte header, magic
//! [`MAGIC`] | version `u16` | CRC-32 of the body `u32` | body length `u64`, then the body:
//!
//! ```text
//! saved_ms u64 | hash key u64 u64 | groups u32 | group* | bans u32 | ban*
//! group: slots u8 (1..=8) | rule fingerprint u64 * slots | entries u64 | entry*
//! entry: key digest u64 | slot * slots
//! slot:  0 (empty) | 1 epoch u32 prev u32 curr u32 (count) | 2 distinct set (distinct.rs)
//! ban:   scope u64 (rule fingerprint, 0 = manual) | key digest u64 | placed_ms u64 |
//!        until_ms u64 | key text length u16 | key text (UTF-8)
//! ```
//!
//! A hand-written format rather than serde: the state is a few plain integer records,
//! the engine's types stay private and unchanged, the detector core takes no new
//! dependency beyond a CRC, and every count read from the file is checked against the
//! bytes left before anything is allocated, so a damaged file can neither panic the
//! reader nor make it allocate more than the file's size. The CRC catches damage the
//! structure does not (a flipped bit in a counter).
//!
//! Keys are stored as the engine's keyed digests, not as text, so a snapshot carries the
//! engine's hash key: keep the file as private as the ledger (warden writes it mode 0600).
//!
//! [`write_file`] replaces the file atomically (temporary file, fsync, rename, fsync of
//! the directory): a crash leaves the previous snapshot or the new one, never a mix.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// First bytes of a snapshot file.
pub const MAGIC: [u8; 8] = *b"WRDNSTAT";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
/// Bytes of the header before the body.
pub const HEADER: usize = 8 + 2 + 4 + 8;

/// Wraps a body in a header with its length and checksum: for tools and the fuzz target,
/// which mutate bodies (a mutated whole file almost never gets past the checksum).
#[must_use]
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(body);
    w.finish()
}

/// Why a snapshot could not be read or written. Restoring fails as a whole: nothing of
/// a snapshot that fails is applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Made by an engine with another hash key, where the key must stay (fleet mode:
    /// the fleet's shared key changed, or the snapshot predates fleet mode).
    #[error("snapshot made with another engine key (fleet.key_file changed, or the snapshot predates fleet mode): its keys would not match the other nodes'")]
    OtherKey,
    /// Not a snapshot at all.
    #[error("not a warden state snapshot (it starts with {found:02x?}, expected {MAGIC:02x?})")]
    Magic {
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// Written by a warden with another format.
    #[error("snapshot format version {found}; this warden reads version {VERSION}")]
    Version {
        /// The version in the file.
        found: u16,
    },
    /// The file ends early (a copy cut short, a full disk).
    #[error(
        "snapshot is truncated: {wanted} more bytes needed at byte {offset}, the file has {len}"
    )]
    Truncated {
        /// Where the read started.
        offset: usize,
        /// Bytes it needed.
        wanted: usize,
        /// Size of the file.
        len: usize,
    },
    /// The body does not match its checksum.
    #[error("snapshot checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is damaged")]
    Checksum {
        /// CRC-32 in the header.
        stored: u32,
        /// CRC-32 of the body.
        computed: u32,
    },
    /// A value that cannot be right.
    #[error("snapshot is corrupt at byte {offset}: {detail}")]
    Corrupt {
        /// Byte offset in the file.
        offset: usize,
        /// What is wrong.
        detail: String,
    },
    /// The engine already holds state: a snapshot is restored into a fresh engine,
    /// before it serves.
    #[error("the engine already holds state ({keys} keys, {bans} bans); restore before serving")]
    NotEmpty {
        /// Keys tracked.
        keys: usize,
        /// Bans held.
        bans: usize,
    },
}

/// Appends little-endian values.
#[derive(Default)]
pub(crate) struct Writer(Vec<u8>);

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
    /// Overwrites the `u64` written at `at` (a count known only after the items).
    pub(crate) fn patch_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// The file: header, then the body written so far.
    pub(crate) fn finish(self) -> Vec<u8> {
        let body = self.0;
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// Reads little-endian values, every read checked against the bytes left.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    /// Offset of `buf` in the file, for error messages.
    base: usize,
    file_len: usize,
}

impl<'a> Reader<'a> {
    /// Checks the header and the checksum; the reader then walks the body.
    pub(crate) fn open(file: &'a [u8]) -> Result<Self, SnapshotError> {
        let truncated = |wanted: usize| SnapshotError::Truncated {
            offset: 0,
            wanted,
            len: file.len(),
        };
        if file.len() < MAGIC.len() || file[..MAGIC.len()] != MAGIC {
            if file.len() < MAGIC.len() && MAGIC.starts_with(file) {
                return Err(truncated(HEADER - file.len()));
            }
            return Err(SnapshotError::Magic {
                found: file[..file.len().min(MAGIC.len())].to_vec(),
            });
        }
        if file.len() < HEADER {
            return Err(truncated(HEADER - file.len()));
        }
        let version = u16::from_le_bytes([file[8], file[9]]);
        if version != VERSION {
            return Err(SnapshotError::Version { found: version });
        }
        let stored = u32::from_le_bytes([file[10], file[11], file[12], file[13]]);
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&file[14..22]);
        let body_len = u64::from_le_bytes(len8);
        let body = &file[HEADER..];
        if (body.len() as u64) < body_len {
            return Err(SnapshotError::Truncated {
                offset: HEADER,
                wanted: usize::try_from(body_len).unwrap_or(usize::MAX),
                len: file.len(),
            });
        }
        if (body.len() as u64) > body_len {
            return Err(SnapshotError::Corrupt {
                offset: HEADER,
                detail: format!(
                    "{} bytes after the {body_len}-byte body",
                    body.len() as u64 - body_len
                ),
            });
        }
        let computed = crc32fast::hash(body);
        if computed != stored {
            return Err(SnapshotError::Checksum { stored, computed });
        }
        Ok(Self {
            buf: body,
            at: 0,
            base: HEADER,
            file_len: file.len(),
        })
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.remaining() < n {
            return Err(SnapshotError::Truncated {
                offset: self.base + self.at,
                wanted: n,
                len: self.file_len,
            });
        }
        let b = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(b)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.at
    }
    /// A count of items at least `min_bytes` each: refused if the bytes left cannot
    /// hold them, so that no count read from the file sizes an allocation by itself.
    pub(crate) fn count(&mut self, n: u64, min_bytes: usize) -> Result<usize, SnapshotError> {
        let fits = (self.remaining() / min_bytes.max(1)) as u64;
        if n > fits {
            return Err(self.bad(format!(
                "{n} items announced, the {} bytes left hold at most {fits}",
                self.remaining()
            )));
        }
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
    /// A corruption error at the current offset.
    pub(crate) fn bad(&self, detail: String) -> SnapshotError {
        SnapshotError::Corrupt {
            offset: self.base + self.at,
            detail,
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it (mode 0600),
/// fsync, rename over `path`, fsync of the directory.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(name);
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the directory is.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Reads a snapshot file; `Ok(None)` if there is none.
pub fn read_file(path: &Path) -> Result<Option<Vec<u8>>, SnapshotError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SnapshotError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}
