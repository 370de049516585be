//! Aspen's VirtioFS backend: a vhost-user-fs device that serves a filesystem to a guest.
//!
//! The VMM (QEMU or Cloud Hypervisor) connects to a Unix socket and hands over the guest's
//! memory and the virtqueues; this backend pops FUSE requests off the queues, answers them with a
//! `fuse-backend-rs` filesystem (a passthrough of a host directory here) and returns the used
//! descriptors. One backend serves one share of one VM; it ends when the VMM disconnects.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use vhost::vhost_user::Listener;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier};

/// The high-priority queue plus one request queue.
const NUM_QUEUES: usize = 2;
/// The largest virtqueue the backend accepts (QEMU's default is 128).
const MAX_QUEUE_SIZE: usize = 1024;
/// How long attributes and entries stay valid in the guest: the workspace changes only through
/// the guest while the job runs.
const GUEST_CACHE_TIMEOUT: Duration = Duration::from_secs(5);

/// A failure to start or run a share's backend.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The shared directory cannot be served.
    #[error("cannot share {path}: {source}")]
    Source {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The vhost-user socket or daemon failed.
    #[error("virtiofs backend for {socket}: {message}")]
    Daemon {
        /// The backend's socket.
        socket: PathBuf,
        /// What failed.
        message: String,
    },
}

struct Inner<F: FileSystem + Send + Sync + 'static> {
    server: Server<F>,
    mem: RwLock<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
    event_idx: AtomicBool,
    exit: (EventConsumer, EventNotifier),
}

/// The vhost-user-fs device over any `fuse-backend-rs` filesystem.
pub struct FsBackend<F: FileSystem + Send + Sync + 'static> {
    inner: Arc<Inner<F>>,
}

impl<F: FileSystem + Send + Sync + 'static> Clone for FsBackend<F> {
    fn clone(&self) -> Self {
        FsBackend { inner: self.inner.clone() }
    }
}

impl<F: FileSystem + Send + Sync + 'static> FsBackend<F> {
    /// A backend answering FUSE requests with `fs`.
    pub fn new(fs: F) -> io::Result<Self> {
        Ok(FsBackend {
            inner: Arc::new(Inner {
                server: Server::new(fs),
                mem: RwLock::new(None),
                event_idx: AtomicBool::new(false),
                exit: new_event_consumer_and_notifier(EventFlag::NONBLOCK)?,
            }),
        })
    }

    /// Answers every request waiting on `vring`.
    fn process_queue(&self, vring: &VringRwLock) -> io::Result<()> {
        let atomic = self
            .inner
            .mem
            .read()
            .map_err(|_| io::Error::other("guest memory lock poisoned"))?
            .clone()
            .ok_or_else(|| io::Error::other("a queue was kicked before guest memory was set"))?;
        let mem = atomic.memory();
        let mut answered = false;
        loop {
            let chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(mem.clone());
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let reader = Reader::from_descriptor_chain(&*mem, chain.clone())
                .map_err(|e| io::Error::other(format!("request descriptors: {e}")))?;
            let writer =
                VirtioFsWriter::new(&*mem, chain).map_err(|e| io::Error::other(format!("reply descriptors: {e}")))?;
            let written = match self.inner.server.handle_message(reader, writer.into(), None, None) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "virtiofs request failed");
                    0
                }
            };
            vring.add_used(head, written as u32).map_err(|e| io::Error::other(format!("used ring: {e}")))?;
            answered = true;
        }
        if answered && vring.needs_notification().map_err(|e| io::Error::other(format!("used ring: {e}")))? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

impl<F: FileSystem + Send + Sync + 'static> VhostUserBackend for FsBackend<F> {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, enabled: bool) {
        self.inner.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *self.inner.mem.write().map_err(|_| io::Error::other("guest memory lock poisoned"))? = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = &self.inner.exit;
        Some((consumer.try_clone().ok()?, notifier.try_clone().ok()?))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let vring = vrings
            .get(device_event as usize)
            .ok_or_else(|| io::Error::other(format!("no virtqueue {device_event}")))?;
        if self.inner.event_idx.load(Ordering::Relaxed) {
            // Drain, re-enable notifications, and drain again if requests raced in between.
            loop {
                vring.disable_notification().map_err(|e| io::Error::other(format!("virtqueue: {e}")))?;
                self.process_queue(vring)?;
                if !vring.enable_notification().map_err(|e| io::Error::other(format!("virtqueue: {e}")))? {
                    break;
                }
            }
            Ok(())
        } else {
            self.process_queue(vring)
        }
    }
}

/// A passthrough filesystem rooted at `dir`: the guest sees that directory and nothing above it.
pub fn passthrough(dir: &Path) -> Result<PassthroughFs, ShareError> {
    let source = |source| ShareError::Source { path: dir.to_path_buf(), source };
    let meta = std::fs::metadata(dir).map_err(source)?;
    if !meta.is_dir() {
        return Err(source(io::Error::other("not a directory")));
    }
    let config = Config {
        root_dir: dir.to_string_lossy().into_owned(),
        do_import: true,
        xattr: false,
        cache_policy: CachePolicy::Auto,
        attr_timeout: GUEST_CACHE_TIMEOUT,
        entry_timeout: GUEST_CACHE_TIMEOUT,
        ..Config::default()
    };
    let fs = PassthroughFs::new(config).map_err(source)?;
    fs.import().map_err(source)?;
    Ok(fs)
}

/// A share's backend, listening on its socket from creation until the VMM disconnects.
pub struct ShareServer {
    socket: PathBuf,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl ShareServer {
    /// Binds `socket` now (so the VMM can be started right after) and serves `fs` to the first
    /// VMM that connects, on a thread of its own.
    pub fn start<F: FileSystem + Send + Sync + 'static>(socket: &Path, fs: F) -> Result<ShareServer, ShareError> {
        let daemon_err = |message: String| ShareError::Daemon { socket: socket.to_path_buf(), message };
        let backend = FsBackend::new(fs).map_err(|e| daemon_err(e.to_string()))?;
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new("aspen-virtiofs".into(), backend.clone(), mem)
            .map_err(|e| daemon_err(e.to_string()))?;
        let mut listener = Listener::new(socket, true).map_err(|e| daemon_err(e.to_string()))?;
        let thread = std::thread::Builder::new()
            .name("aspen-virtiofs".into())
            .spawn(move || {
                let served = daemon.start(&mut listener).and_then(|()| daemon.wait()).map_err(|e| e.to_string());
                for handler in daemon.get_epoll_handlers() {
                    handler.send_exit_event();
                }
                drop(backend);
                served
            })
            .map_err(|e| daemon_err(e.to_string()))?;
        Ok(ShareServer { socket: socket.to_path_buf(), thread: Some(thread) })
    }

    /// Ends the backend: once the VMM is gone, the serving thread returns. If no VMM ever
    /// connected, a connection of our own unblocks the accept. Waits at most `limit`.
    pub fn stop(mut self, limit: Duration) -> Result<(), String> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let deadline = std::time::Instant::now() + limit;
        let mut poked = false;
        while !thread.is_finished() {
            if !poked && self.socket.exists() {
                // Unblocks an accept still waiting; a served connection ignores it.
                let _ = UnixStream::connect(&self.socket);
                poked = true;
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("virtiofs backend for {} did not stop within {limit:?}", self.socket.display()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match thread.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.contains("disconnect") || e.contains("Disconnected") => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("virtiofs backend thread panicked".into()),
        }
    }
}
