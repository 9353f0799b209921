//! A writer for the kernel's initramfs format: an uncompressed `newc` cpio archive
//! (see the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Every entry is a 110-byte ASCII header (`070701` then 13 eight-digit hex fields),
//! the NUL-terminated name, padding to 4 bytes, the data, padding to 4 bytes. The
//! kernel does not create missing parent directories, so the writer emits them first.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

/// Streams a `newc` archive into `out`. Paths are archive paths (`bin/busybox`);
/// a leading `/` is dropped.
#[derive(Debug)]
pub(crate) struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    offset: u64,
    dirs: BTreeSet<String>,
    /// Every name written but directories: a second entry would shadow the first.
    others: BTreeSet<String>,
}

/// One entry's header fields that vary.
struct Header<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
}

impl<W: Write> Writer<W> {
    pub(crate) fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            offset: 0,
            dirs: BTreeSet::new(),
            others: BTreeSet::new(),
        }
    }

    /// A directory (and its parents), once.
    pub(crate) fn dir(&mut self, path: &str) -> io::Result<()> {
        let path = normalize(path)?;
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if self.others.contains(path) {
            return Err(taken(path));
        }
        self.parents(path)?;
        self.dirs.insert(path.to_owned());
        self.entry(
            &Header {
                name: path,
                mode: S_IFDIR | 0o755,
                nlink: 2,
                size: 0,
                rdev: (0, 0),
            },
            &[],
        )
    }

    /// A regular file with permission bits `perm` (e.g. `0o755`).
    pub(crate) fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let path = normalize(path)?;
        self.claim(path)?;
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path}: {} bytes is too large for a newc entry", data.len()),
            )
        })?;
        self.entry(
            &Header {
                name: path,
                mode: S_IFREG | (perm & 0o7777),
                nlink: 1,
                size,
                rdev: (0, 0),
            },
            data,
        )
    }

    /// A character device node (e.g. `dev/console`, 5:1).
    pub(crate) fn char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        let path = normalize(path)?;
        self.claim(path)?;
        self.entry(
            &Header {
                name: path,
                mode: S_IFCHR | (perm & 0o7777),
                nlink: 1,
                size: 0,
                rdev: (major, minor),
            },
            &[],
        )
    }

    /// Writes the trailer and returns the sink and the archive's size in bytes.
    pub(crate) fn finish(mut self) -> io::Result<(W, u64)> {
        self.entry(
            &Header {
                name: TRAILER,
                mode: 0,
                nlink: 1,
                size: 0,
                rdev: (0, 0),
            },
            &[],
        )?;
        self.out.flush()?;
        Ok((self.out, self.offset))
    }

    /// Claims `path` for a non-directory entry and creates its parents.
    fn claim(&mut self, path: &str) -> io::Result<()> {
        if self.dirs.contains(path) || !self.others.insert(path.to_owned()) {
            return Err(taken(path));
        }
        self.parents(path)
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        Ok(())
    }

    fn entry(&mut self, header: &Header<'_>, data: &[u8]) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let name_size = u32::try_from(header.name.len() + 1).expect("a path is short");
        let fields = [
            ino,
            header.mode,
            0, // uid
            0, // gid
            header.nlink,
            0, // mtime: fixed, so that the archive is reproducible
            header.size,
            0, // devmajor
            0, // devminor
            header.rdev.0,
            header.rdev.1,
            name_size,
            0, // check: only for the "070702" format
        ];
        let mut head = String::with_capacity(110 + header.name.len() + 4);
        head.push_str(MAGIC);
        for field in fields {
            write!(head, "{field:08x}").expect("writing to a String");
        }
        head.push_str(header.name);
        head.push('\0');
        self.put(head.as_bytes())?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let fill = (4 - self.offset % 4) % 4;
        self.put(&[0; 3][..usize::try_from(fill).expect("fill < 4")])
    }
}

fn taken(path: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{path}: already in the archive"),
    )
}

fn normalize(path: &str) -> io::Result<&str> {
    let path = path.trim_start_matches('/').trim_end_matches('/');
    if path.split('/').any(|c| c == ".." || c == ".") || path.contains("//") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path}: archive paths must be plain (no `.`, `..` or `//`)"),
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::Writer;

    /// Reads back (name, mode, data) triples: an independent check of the layout.
    fn entries(archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(&archive[at..at + 6], b"070701", "magic at {at}");
            let field = |i: usize| hex(&archive[at + 6 + 8 * i..at + 14 + 8 * i]);
            let (mode, size, name_size) = (field(1), field(6) as usize, field(11) as usize);
            let name_at = at + 110;
            let name = std::str::from_utf8(&archive[name_at..name_at + name_size - 1]).unwrap();
            assert_eq!(archive[name_at + name_size - 1], 0);
            let data_at = (name_at + name_size).next_multiple_of(4);
            let data = archive[data_at..data_at + size].to_vec();
            at = (data_at + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(at, archive.len());
                return out;
            }
            out.push((name.to_owned(), mode, data));
        }
    }

    #[test]
    fn writes_parents_first_and_pads_to_four_bytes() {
        let mut w = Writer::new(Vec::new());
        w.file("/usr/bin/x", 0o755, b"abcde").unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.dir("usr").unwrap();
        let (archive, size) = w.finish().unwrap();
        assert_eq!(size, archive.len() as u64);
        assert_eq!(archive.len() % 4, 0);
        let got = entries(&archive);
        let names: Vec<_> = got.iter().map(|(n, m, _)| (n.as_str(), *m)).collect();
        assert_eq!(
            names,
            [
                ("usr", 0o040_755),
                ("usr/bin", 0o040_755),
                ("usr/bin/x", 0o100_755),
                ("dev", 0o040_755),
                ("dev/console", 0o020_600),
            ]
        );
        assert_eq!(got[2].2, b"abcde");
    }

    #[test]
    fn rejects_dot_dot_and_duplicates() {
        let mut w = Writer::new(Vec::new());
        assert!(w.file("a/../b", 0o644, b"").is_err());
        w.file("a/b", 0o644, b"").unwrap();
        assert!(w.file("a/b", 0o644, b"").is_err());
        assert!(w.file("a", 0o644, b"").is_err(), "a is a directory");
        assert!(w.dir("a/b").is_err(), "a/b is a file");
    }
}
