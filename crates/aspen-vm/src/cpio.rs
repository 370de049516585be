//! A minimal writer for "newc" (SVR4, magic `070701`) cpio archives, the format the Linux kernel
//! unpacks as an initramfs.
//!
//! The writer is deliberately reproducible: every entry is owned by root, has mtime 0 and gets
//! the next inode number in sequence, so the same calls always produce the same bytes.

use std::io::{self, Write};

/// Magic of a newc header without checksums.
const MAGIC: &[u8; 6] = b"070701";
/// Size of a newc header: the magic plus 13 eight-digit hex fields.
const HEADER_LEN: usize = 110;
/// Name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";
/// The finished archive is padded to a multiple of this (the traditional cpio block size).
const BLOCK: u64 = 512;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
/// Permission bits (including setuid, setgid and sticky) a caller may pass as `mode`.
const PERM_MASK: u32 = 0o7777;

/// Streams a newc cpio archive into `W`; call [`CpioWriter::finish`] to end it.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    inner: W,
    written: u64,
    next_ino: u32,
}

/// The fields of one header that vary between entries.
struct Entry<'a> {
    path: &'a str,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

impl<W: Write> CpioWriter<W> {
    /// Starts an empty archive written to `inner`.
    pub fn new(inner: W) -> Self {
        CpioWriter { inner, written: 0, next_ino: 1 }
    }

    /// Adds a directory; `mode` holds the permission bits (e.g. `0o755`, `0o1777`).
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let mode = S_IFDIR | (mode & PERM_MASK);
        self.entry(&Entry { path, mode, nlink: 2, rdev: (0, 0), data: &[] })
    }

    /// Adds a regular file with the given permission bits and contents.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let mode = S_IFREG | (mode & PERM_MASK);
        self.entry(&Entry { path, mode, nlink: 1, rdev: (0, 0), data })
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        if target.is_empty() || target.contains('\0') {
            return Err(invalid(format!("bad symlink target {target:?} for {path:?}")));
        }
        let mode = S_IFLNK | 0o777;
        self.entry(&Entry { path, mode, nlink: 1, rdev: (0, 0), data: target.as_bytes() })
    }

    /// Adds a character device node with the given permission bits and device numbers.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let mode = S_IFCHR | (mode & PERM_MASK);
        self.entry(&Entry { path, mode, nlink: 1, rdev: (major, minor), data: &[] })
    }

    /// Writes the trailer, pads the archive to 512 bytes, flushes and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.raw_entry(0, &Entry { path: TRAILER, mode: 0, nlink: 1, rdev: (0, 0), data: &[] })?;
        let rest = self.written.next_multiple_of(BLOCK) - self.written;
        // `rest` is below 512, so the cast cannot truncate.
        self.write_all(&[0u8; BLOCK as usize][..rest as usize])?;
        self.inner.flush()?;
        Ok(self.inner)
    }

    /// Validates the path and writes an entry with a fresh inode number.
    fn entry(&mut self, entry: &Entry<'_>) -> io::Result<()> {
        let path = entry.path.trim_start_matches('/');
        if path.is_empty() || path.contains('\0') || path == TRAILER {
            return Err(invalid(format!("bad cpio entry name {:?}", entry.path)));
        }
        let ino = self.next_ino;
        self.next_ino = ino.checked_add(1).ok_or_else(|| invalid("too many cpio entries"))?;
        self.raw_entry(ino, &Entry { path, ..*entry })
    }

    /// Writes header, name and data, each padded as newc requires.
    fn raw_entry(&mut self, ino: u32, entry: &Entry<'_>) -> io::Result<()> {
        let size = u32::try_from(entry.data.len())
            .map_err(|_| invalid(format!("{} is too large for cpio (4 GiB limit)", entry.path)))?;
        // The name is stored with a terminating NUL, which `namesize` counts.
        let name_size = u32::try_from(entry.path.len() + 1)
            .map_err(|_| invalid(format!("cpio entry name too long: {}", entry.path)))?;
        let fields = [
            ino,
            entry.mode,
            0, // uid
            0, // gid
            entry.nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            entry.rdev.0,
            entry.rdev.1,
            name_size,
            0, // check (unused by newc)
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + entry.path.len() + 4);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        header.extend_from_slice(entry.path.as_bytes());
        header.push(0);
        header.resize(header.len().next_multiple_of(4), 0);
        self.write_all(&header)?;
        self.write_all(entry.data)?;
        self.write_all(&[0u8; 3][..entry.data.len().next_multiple_of(4) - entry.data.len()])
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    /// One parsed entry of a newc archive.
    #[derive(Debug, PartialEq)]
    struct Parsed {
        ino: u32,
        mode: u32,
        nlink: u32,
        mtime: u32,
        rdev: (u32, u32),
        name: String,
        data: Vec<u8>,
    }

    /// A tiny independent newc reader: returns all entries including the trailer.
    fn parse(mut bytes: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut offset = 0usize;
        loop {
            assert_eq!(offset % 4, 0, "entry not 4-byte aligned");
            assert_eq!(&bytes[..6], b"070701", "bad magic at {offset}");
            let field = |i: usize| {
                let text = std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(text, 16).unwrap()
            };
            let name_size = field(11) as usize;
            let size = field(6) as usize;
            let name = &bytes[HEADER_LEN..HEADER_LEN + name_size];
            assert_eq!(name.last(), Some(&0), "name not NUL terminated");
            let name = String::from_utf8(name[..name_size - 1].to_vec()).unwrap();
            let data_start = (HEADER_LEN + name_size).next_multiple_of(4);
            let data = bytes[data_start..data_start + size].to_vec();
            let entry_len = (data_start + size).next_multiple_of(4);
            assert!(bytes[data_start + size..entry_len].iter().all(|&b| b == 0));
            out.push(Parsed {
                ino: field(0),
                mode: field(1),
                nlink: field(4),
                mtime: field(5),
                rdev: (field(9), field(10)),
                name,
                data,
            });
            bytes = &bytes[entry_len..];
            offset += entry_len;
            if out.last().is_some_and(|p| p.name == TRAILER) {
                assert!(bytes.iter().all(|&b| b == 0), "garbage after trailer");
                return out;
            }
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/bin", 0o755).unwrap();
        w.dir("tmp", 0o1777).unwrap();
        w.file("/bin/hello", 0o755, b"hello world\n").unwrap();
        w.file("empty", 0o644, b"").unwrap();
        w.symlink("/bin/sh", "/bin/hello").unwrap();
        w.char_device("dev-console", 0o600, 5, 1).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn archive_parses_back() {
        let bytes = sample();
        assert_eq!(bytes.len() % 512, 0);
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["bin", "tmp", "bin/hello", "empty", "bin/sh", "dev-console", TRAILER]);
        assert_eq!(entries[0].mode, 0o040_755);
        assert_eq!(entries[0].nlink, 2);
        assert_eq!(entries[1].mode, 0o041_777);
        assert_eq!(entries[2].mode, 0o100_755);
        assert_eq!(entries[2].nlink, 1);
        assert_eq!(entries[2].data, b"hello world\n");
        assert_eq!(entries[3].data, b"");
        assert_eq!(entries[4].mode, 0o120_777);
        assert_eq!(entries[4].data, b"/bin/hello");
        assert_eq!(entries[5].mode, 0o020_600);
        assert_eq!(entries[5].rdev, (5, 1));
        assert_eq!(entries[6].ino, 0);
        let inos: Vec<u32> = entries[..6].iter().map(|e| e.ino).collect();
        assert_eq!(inos, [1, 2, 3, 4, 5, 6]);
        assert!(entries.iter().all(|e| e.mtime == 0));
        // Same calls, same bytes.
        assert_eq!(bytes, sample());
    }

    #[test]
    fn rejects_bad_names() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("/", 0o644, b"").is_err());
        assert!(w.file("a\0b", 0o644, b"").is_err());
        assert!(w.dir(TRAILER, 0o755).is_err());
        assert!(w.symlink("link", "").is_err());
    }

    fn scratch_dir(tag: &str) -> PathBuf {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("aspen-cpio-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn cpio_available() -> bool {
        let ok = Command::new("cpio")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipping: no `cpio` binary on this machine");
        }
        ok
    }

    fn run_cpio(args: &[&str], archive: &[u8], cwd: &Path) -> String {
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "cpio {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn cpio_tool_lists_archive() {
        if !cpio_available() {
            return;
        }
        let dir = scratch_dir("list");
        let listing = run_cpio(&["-t", "--quiet"], &sample(), &dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<&str> = listing.lines().collect();
        assert_eq!(names, ["bin", "tmp", "bin/hello", "empty", "bin/sh", "dev-console"]);
    }

    #[test]
    fn cpio_tool_extracts_archive() {
        if !cpio_available() {
            return;
        }
        let mut w = CpioWriter::new(Vec::new());
        w.dir("etc", 0o755).unwrap();
        w.dir("etc/sub", 0o700).unwrap();
        w.file("etc/sub/conf", 0o640, b"key=value\n").unwrap();
        w.symlink("etc/link", "sub/conf").unwrap();
        let archive = w.finish().unwrap();

        let dir = scratch_dir("extract");
        run_cpio(&["-i", "-d", "--quiet", "--no-absolute-filenames"], &archive, &dir);
        let conf = std::fs::read(dir.join("etc/sub/conf"));
        let via_link = std::fs::read(dir.join("etc/link"));
        let target = std::fs::read_link(dir.join("etc/link"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(conf.unwrap(), b"key=value\n");
        assert_eq!(via_link.unwrap(), b"key=value\n");
        assert_eq!(target.unwrap(), Path::new("sub/conf"));
    }
}
