//! The wire protocol between the microVM runner on the host and the guest agent (PID 1 of the
//! guest image), and nothing else: no I/O beyond reading and writing frames.
//!
//! A frame is a 4-byte little-endian length followed by a postcard-encoded message. The host
//! speaks [`HostMsg`], the guest [`GuestMsg`]. Both enums are frozen formats (golden-tested):
//! variants are only appended, and a change of meaning is a new variant.
//!
//! The conversation: the guest says [`GuestMsg::Hello`]; the host sends one [`HostMsg::Job`];
//! the guest streams [`GuestMsg::Stdout`] / [`GuestMsg::Stderr`] while the job runs, then one
//! [`GuestMsg::Output`] or [`GuestMsg::OutputError`] per requested output file, then
//! [`GuestMsg::Exit`], and powers the VM off.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The protocol version the agent announces in its hello.
pub const PROTOCOL_VERSION: u32 = 1;
/// The largest frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 9 << 20;
/// The largest output file the agent returns inline; larger outputs belong in a share.
pub const MAX_OUTPUT_FILE_BYTES: usize = 8 << 20;
/// The most output files one job may name.
pub const MAX_OUTPUT_FILES: usize = 64;
/// The largest chunk of stdout or stderr in one frame.
pub const MAX_STREAM_CHUNK: usize = 64 << 10;
/// The name of the virtio-serial port the agent talks on (QEMU).
pub const SERIAL_PORT_NAME: &str = "org.aspen.agent";
/// The vsock port the agent listens on (Cloud Hypervisor).
pub const VSOCK_PORT: u32 = 1024;

/// A message from the host to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMsg {
    /// Run this job.
    Job(Job),
}

/// What the guest runs: a process with its environment and the shares it needs mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The program and its arguments; the program is looked up in `PATH` of `env`.
    pub argv: Vec<String>,
    /// The whole environment of the job (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// The working directory, inside the guest.
    pub cwd: String,
    /// VirtioFS shares to mount before the job starts.
    pub mounts: Vec<ShareMount>,
    /// Files (guest paths) returned to the host after the job ends.
    pub outputs: Vec<String>,
    /// The guest network, if the job may use one; `None` leaves only loopback.
    pub network: Option<GuestNetwork>,
}

/// A VirtioFS share mounted in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareMount {
    /// The virtiofs tag the VMM gave the device.
    pub tag: String,
    /// Where the guest mounts it.
    pub path: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// Static addressing of the guest's first network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    /// Address with prefix length, such as `10.0.2.15/24`.
    pub address: String,
    /// Default gateway.
    pub gateway: String,
    /// Name server written to `/etc/resolv.conf`.
    pub dns: String,
}

/// A message from the guest to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMsg {
    /// The agent is up and waits for its job.
    Hello {
        /// [`PROTOCOL_VERSION`] of the agent.
        version: u32,
        /// The guest kernel release (`uname -r`).
        kernel: String,
    },
    /// The job has started (shares are mounted, the process is spawned).
    Started,
    /// A chunk of the job's stdout.
    Stdout(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A chunk of the job's stderr.
    Stderr(#[serde(with = "serde_bytes")] Vec<u8>),
    /// An output file's contents.
    Output {
        /// The guest path as the job named it.
        path: String,
        /// Its bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// An output file that could not be returned.
    OutputError {
        /// The guest path as the job named it.
        path: String,
        /// Why.
        message: String,
    },
    /// The job ended.
    Exit(ExitStatus),
    /// The agent could not run the job (bad argv, a share that would not mount, ...).
    Failed {
        /// What went wrong, naming the thing.
        message: String,
    },
}

/// How the job's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// True for exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// A frame that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended.
    #[error("agent channel: {0}")]
    Io(#[from] io::Error),
    /// The length prefix is beyond [`MAX_FRAME_BYTES`].
    #[error("agent frame of {0} bytes exceeds the limit of {MAX_FRAME_BYTES} bytes")]
    TooLarge(usize),
    /// The bytes do not decode as the expected message.
    #[error("malformed agent frame: {0}")]
    Malformed(postcard::Error),
}

/// Encodes one message as a frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_allocvec(msg).map_err(FrameError::Malformed)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Writes one message as a frame and flushes.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame and decodes it. A clean end of stream before the prefix is
/// `io::ErrorKind::UnexpectedEof`.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    postcard::from_bytes(&body).map_err(FrameError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let job = HostMsg::Job(Job {
            argv: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec![("PATH".into(), "/bin".into())],
            cwd: "/work".into(),
            mounts: vec![ShareMount { tag: "work".into(), path: "/work".into(), read_only: false }],
            outputs: vec!["/tmp/out".into()],
            network: None,
        });
        let mut buf = Vec::new();
        write_frame(&mut buf, &job).unwrap();
        write_frame(&mut buf, &GuestMsg::Exit(ExitStatus::Signal(9))).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame::<_, HostMsg>(&mut r).unwrap(), job);
        assert_eq!(read_frame::<_, GuestMsg>(&mut r).unwrap(), GuestMsg::Exit(ExitStatus::Signal(9)));
        let end = read_frame::<_, GuestMsg>(&mut r).unwrap_err();
        assert!(matches!(end, FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[test]
    fn oversize_and_malformed_frames_are_named() {
        let mut big = Vec::new();
        big.extend_from_slice(&((MAX_FRAME_BYTES as u32) + 1).to_le_bytes());
        let err = read_frame::<_, GuestMsg>(&mut &big[..]).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");

        let mut bad = Vec::new();
        bad.extend_from_slice(&2u32.to_le_bytes());
        bad.extend_from_slice(&[200, 1]);
        let err = read_frame::<_, GuestMsg>(&mut &bad[..]).unwrap_err();
        assert!(err.to_string().contains("malformed agent frame"), "{err}");
    }
}
