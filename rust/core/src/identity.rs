//! File identity: (dev, inode) plus a fingerprint of the file's first bytes. The inode alone is
//! not enough (inodes are reused after deletion); the fingerprint alone is not enough (many log
//! files start alike). The fingerprint grows with the file up to [`FINGERPRINT_MAX`] bytes and is
//! compared by prefix while either side is shorter, so a growing small file keeps its identity.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::counters::Syscalls;

pub const FINGERPRINT_MAX: usize = 1024;

/// A fast hasher for small integer keys (file identities, watch descriptors): the maps keyed by
/// them are looked up once per file per read, where SipHash showed in profiles. Keys are not
/// attacker-chosen (inodes, descriptors), so collision resistance is not needed.
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_i32(&mut self, n: i32) {
        self.write_u64(u64::from(n as u32));
    }
}

pub type KeyMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<KeyHasher>>;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint {
    pub bytes: Vec<u8>,
}

impl Fingerprint {
    /// Read up to [`FINGERPRINT_MAX`] bytes from the head of `file` (one `pread`).
    pub fn read(file: &File, sys: &mut Syscalls) -> std::io::Result<Self> {
        let mut bytes = vec![0u8; FINGERPRINT_MAX];
        sys.read += 1;
        let n = file.read_at(&mut bytes, 0)?;
        bytes.truncate(n);
        Ok(Fingerprint { bytes })
    }

    /// Same content as far as both sides go.
    pub fn compatible(&self, other: &Fingerprint) -> bool {
        let n = self.bytes.len().min(other.bytes.len());
        self.bytes[..n] == other.bytes[..n]
    }

    /// Enough to tell files apart: a whole line, or the full length. A head shorter than its
    /// first line (a lone partial write) matches too much to prove identity.
    pub fn is_evidence(&self) -> bool {
        self.is_full() || memchr::memchr(b'\n', &self.bytes).is_some()
    }

    pub fn is_full(&self) -> bool {
        self.bytes.len() >= FINGERPRINT_MAX
    }

    /// Extend with bytes read at `offset` (free: they come from the reader's own buffer).
    pub fn extend_from(&mut self, offset: u64, data: &[u8]) {
        let have = self.bytes.len() as u64;
        if self.is_full() || offset > have || offset + data.len() as u64 <= have {
            return;
        }
        let start = (have - offset) as usize;
        let take = (FINGERPRINT_MAX - self.bytes.len()).min(data.len() - start);
        self.bytes.extend_from_slice(&data[start..start + take]);
    }

    pub fn to_hex(&self) -> String {
        const H: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(self.bytes.len() * 2);
        for b in &self.bytes {
            s.push(H[(b >> 4) as usize] as char);
            s.push(H[(b & 15) as usize] as char);
        }
        s
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if !s.len().is_multiple_of(2) {
            return None;
        }
        let v: Option<Vec<u8>> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect();
        v.map(|bytes| Fingerprint { bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_compare_and_growth() {
        let mut a = Fingerprint { bytes: b"abc".to_vec() };
        let b = Fingerprint { bytes: b"abcdef".to_vec() };
        assert!(a.compatible(&b));
        assert!(!a.compatible(&Fingerprint { bytes: b"abX".to_vec() }));
        a.extend_from(2, b"cdefg");
        assert_eq!(a.bytes, b"abcdefg");
        a.extend_from(100, b"zz");
        assert_eq!(a.bytes, b"abcdefg");
        assert_eq!(Fingerprint::from_hex(&a.to_hex()).unwrap(), a);
    }

    #[test]
    fn growth_stops_at_max() {
        let mut a = Fingerprint::default();
        a.extend_from(0, &vec![7u8; 3000]);
        assert_eq!(a.bytes.len(), FINGERPRINT_MAX);
    }
}
