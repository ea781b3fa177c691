//! The bytes a registry helper process sends back: the cycle's result,
//! encoded with a few fixed rules (little-endian integers, length-prefixed
//! strings and lists, a tag byte for options, results and error kinds).
//!
//! Both ends are the same build of this crate, so the encoding needs no
//! versioning; decoding still checks every length and tag, and returns None
//! on anything malformed instead of panicking.

use crate::{Error, OwnerId, Result};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// A value that can cross the pipe.
pub(crate) trait Wire: Sized {
    fn put(&self, out: &mut Vec<u8>);
    fn take(inp: &mut &[u8]) -> Option<Self>;
}

pub(crate) fn encode<T: Wire>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    v.put(&mut out);
    out
}

/// Decodes a whole answer; trailing bytes are an error.
pub(crate) fn decode<T: Wire>(mut bytes: &[u8]) -> Option<T> {
    let v = T::take(&mut bytes)?;
    bytes.is_empty().then_some(v)
}

fn take_n<'a>(inp: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if inp.len() < n {
        return None;
    }
    let (a, b) = inp.split_at(n);
    *inp = b;
    Some(a)
}

impl Wire for () {
    fn put(&self, _: &mut Vec<u8>) {}
    fn take(_: &mut &[u8]) -> Option<Self> {
        Some(())
    }
}

impl Wire for bool {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn take(inp: &mut &[u8]) -> Option<Self> {
        match take_n(inp, 1)?[0] {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
}

impl Wire for u32 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn take(inp: &mut &[u8]) -> Option<Self> {
        Some(u32::from_le_bytes(take_n(inp, 4)?.try_into().ok()?))
    }
}

impl Wire for i32 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn take(inp: &mut &[u8]) -> Option<Self> {
        Some(i32::from_le_bytes(take_n(inp, 4)?.try_into().ok()?))
    }
}

impl Wire for OwnerId {
    fn put(&self, out: &mut Vec<u8>) {
        self.get().put(out);
    }
    fn take(inp: &mut &[u8]) -> Option<Self> {
        u32::take(inp).map(OwnerId)
    }
}

impl Wire for Vec<u8> {
    fn put(&self, out: &mut Vec<u8>) {
        (self.len() as u32).put(out);
        out.extend_from_slice(self);
    }
    fn take(inp: &mut &[u8]) -> Option<Self> {
        let n = u32::take(inp)? as usize;
        take_n(inp, n).map(<[u8]>::to_vec)
    }
}

impl Wire for String {
    fn put(&self, out: &mut Vec<u8>) {
        self.as_bytes().to_vec().put(out);
    }
    fn take(inp: &mut &[u8]) -> Option<Self> {
        String::from_utf8(Vec::<u8>::take(inp)?).ok()
    }
}

impl Wire for PathBuf {
    fn put(&self, out: &mut Vec<u8>) {
        self.as_os_str().as_bytes().to_vec().put(out);
    }
    fn take(inp: &mut &[u8]) -> Option<Self> {
        Some(PathBuf::from(OsString::from_vec(Vec::<u8>::take(inp)?)))
    }
}

impl<T: Wire> Wire for Option<T> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.put(out);
            }
        }
    }
    fn take(inp: &mut &[u8]) -> Option<Self> {
        match take_n(inp, 1)?[0] {
            0 => Some(None),
            1 => Some(Some(T::take(inp)?)),
            _ => None,
        }
    }
}

impl<T: Wire> Wire for Vec<T> {
    fn put(&self, out: &mut Vec<u8>) {
        (self.len() as u32).put(out);
        for v in self {
            v.put(out);
        }
    }
    fn take(inp: &mut &[u8]) -> Option<Self> {
        let n = u32::take(inp)? as usize;
        // Each element takes at least one byte... or none (unit): cap the
        // up-front allocation by what is left.
        let mut v = Vec::with_capacity(n.min(inp.len()));
        for _ in 0..n {
            v.push(T::take(inp)?);
        }
        Some(v)
    }
}

impl<A: Wire, B: Wire> Wire for (A, B) {
    fn put(&self, out: &mut Vec<u8>) {
        self.0.put(out);
        self.1.put(out);
    }
    fn take(inp: &mut &[u8]) -> Option<Self> {
        Some((A::take(inp)?, B::take(inp)?))
    }
}

impl Wire for Error {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Error::InvalidName { reason } => {
                out.push(0);
                reason.put(out);
            }
            Error::Lock { path, source } => {
                out.push(1);
                path.put(out);
                source.raw_os_error().unwrap_or(-1).put(out);
                source.to_string().put(out);
            }
            Error::Store { path, reason } => {
                out.push(2);
                path.put(out);
                reason.put(out);
            }
            Error::Exhausted => out.push(3),
            Error::Helper { lock, reason } => {
                out.push(4);
                lock.put(out);
                reason.put(out);
            }
        }
    }
    fn take(inp: &mut &[u8]) -> Option<Self> {
        Some(match take_n(inp, 1)?[0] {
            0 => Error::InvalidName { reason: String::take(inp)? },
            1 => {
                let path = PathBuf::take(inp)?;
                let code = i32::take(inp)?;
                let msg = String::take(inp)?;
                let source = if code >= 0 {
                    std::io::Error::from_raw_os_error(code)
                } else {
                    std::io::Error::other(msg)
                };
                Error::Lock { path, source }
            }
            2 => Error::Store { path: PathBuf::take(inp)?, reason: String::take(inp)? },
            3 => Error::Exhausted,
            4 => Error::Helper { lock: PathBuf::take(inp)?, reason: String::take(inp)? },
            _ => return None,
        })
    }
}

impl<T: Wire> Wire for Result<T> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Ok(v) => {
                out.push(0);
                v.put(out);
            }
            Err(e) => {
                out.push(1);
                e.put(out);
            }
        }
    }
    fn take(inp: &mut &[u8]) -> Option<Self> {
        match take_n(inp, 1)?[0] {
            0 => Some(Ok(T::take(inp)?)),
            1 => Some(Err(Error::take(inp)?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let v: Result<(bool, Vec<(String, OwnerId)>)> =
            Ok((true, vec![("a".into(), OwnerId(1)), ("ü".into(), OwnerId(u32::MAX))]));
        let back = decode::<Result<(bool, Vec<(String, OwnerId)>)>>(&encode(&v)).unwrap().unwrap();
        assert_eq!(back, (true, vec![("a".into(), OwnerId(1)), ("ü".into(), OwnerId(u32::MAX))]));
        let o: Option<Option<String>> = Some(None);
        assert_eq!(decode::<Option<Option<String>>>(&encode(&o)), Some(Some(None)));
    }

    #[test]
    fn errors_round_trip_with_their_kind() {
        let e: Result<()> = Err(Error::Lock {
            path: "/x/lock".into(),
            source: std::io::Error::from_raw_os_error(libc_eacces()),
        });
        match decode::<Result<()>>(&encode(&e)).unwrap() {
            Err(Error::Lock { path, source }) => {
                assert_eq!(path, PathBuf::from("/x/lock"));
                assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
            }
            other => panic!("{other:?}"),
        }
        let e: Result<u32> = Err(Error::Exhausted);
        assert!(matches!(decode::<Result<u32>>(&encode(&e)), Some(Err(Error::Exhausted))));
    }

    fn libc_eacces() -> i32 {
        13
    }

    #[test]
    fn malformed_bytes_are_none_never_a_panic() {
        assert_eq!(decode::<u32>(&[1, 2]), None);
        assert_eq!(decode::<u32>(&[1, 2, 3, 4, 5]), None);
        assert_eq!(decode::<Vec<u32>>(&[255, 255, 255, 255]), None);
        assert!(decode::<Result<()>>(&[9]).is_none());
        assert!(decode::<Option<u32>>(&[2]).is_none());
        assert!(decode::<String>(&[2, 0, 0, 0, 0xff, 0xfe]).is_none());
    }
}
