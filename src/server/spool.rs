//! Where the poller keeps a request body while it arrives (nginx's `client_body_buffer_size` and
//! `client_body_temp_path`): in memory up to a threshold, then in a temp file. The file is
//! unlinked as soon as it is created, so it disappears when the request ends, however it ends
//! (an error, a stop, a crash); nothing is ever left to clean up.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::error::RequestError;
use super::upload::{EarlyAnswerCheck, UploadStream};

/// How request bodies are buffered before a worker sees them, and what all buffered bodies
/// together, and one client's, may use.
///
/// ```
/// let buffering = lb_sync::server::BodyBuffering::default();
/// assert_eq!(buffering.memory_threshold, 64 * 1024);
/// assert_eq!((buffering.disk_free_share, buffering.client_disk_share), (0.25, 0.25));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct BodyBuffering {
    /// A body larger than this goes to a temp file. Default 64 KiB (nginx's
    /// `client_body_buffer_size` is 16 KiB).
    pub memory_threshold: usize,
    /// Bytes of bodies held in memory by all connections together; past it, bodies go straight
    /// to temp files. Default 64 MiB.
    pub memory_cap: u64,
    /// Bytes of temp files of all connections together, however much room the disk has; past
    /// the cap in force (this or `disk_free_share`, the smaller) a body is refused with `503`
    /// and `Retry-After`. Default 16 GiB.
    pub disk_cap: u64,
    /// Share of the temp directory's free space, as measured at start, that temp files may take
    /// together (0.25: a quarter), so bodies never fill the disk, or the memory of a tmpfs.
    /// Default 0.25.
    pub disk_free_share: f64,
    /// Share of the cap in force that the temp files of one client may take (the client of
    /// `ServerConfig::client_key`: the peer's address without one); past it its body is
    /// refused with `429` and `Retry-After` while other clients' go on. Default 0.25.
    pub client_disk_share: f64,
    /// Where temp files are made (nginx's `client_body_temp_path`). Default the system temp
    /// directory. Files are unlinked as soon as they are made.
    pub temp_dir: PathBuf,
    /// Whether a body is read whole before the request goes to a worker. Default true (nginx's
    /// `proxy_request_buffering on`). Off, the request goes to a worker as soon as its head is
    /// read and the body streams to the backend as it arrives (a worker then waits for the
    /// client, held to `min_upload_rate`); such a body cannot be resent to another backend.
    pub request_buffering: bool,
    /// The slowest a client may send a body, buffered or streamed: it gets `io_timeout` (the
    /// grace at its start) plus one second per this many bytes received, in all (Apache's
    /// mod_reqtimeout `MinRate`, whose default is 500); slower, it is cut with `408`. Default
    /// 500 bytes/s; 0 turns the overall limit off (the per-read `io_timeout` still applies).
    pub min_upload_rate: u64,
}

impl Default for BodyBuffering {
    fn default() -> BodyBuffering {
        BodyBuffering {
            memory_threshold: 64 * 1024,
            memory_cap: 64 << 20,
            disk_cap: 16 << 30,
            disk_free_share: 0.25,
            client_disk_share: 0.25,
            temp_dir: std::env::temp_dir(),
            request_buffering: true,
            min_upload_rate: 500,
        }
    }
}

/// What temp files may hold: all of them together, and one client's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DiskCaps {
    /// Bytes of all temp files together.
    pub total: u64,
    /// Bytes of one client's temp files.
    pub per_client: u64,
}

impl DiskCaps {
    /// The caps in force for `config`, given the temp directory's free bytes (none when they
    /// could not be read: then `disk_cap` alone).
    pub fn of(config: &BodyBuffering, free: Option<u64>) -> DiskCaps {
        let share = |bytes: u64, share: f64| (bytes as f64 * share.clamp(0.0, 1.0)) as u64;
        let total = free.map_or(config.disk_cap, |free| config.disk_cap.min(share(free, config.disk_free_share)));
        DiskCaps { total, per_client: share(total, config.client_disk_share) }
    }
}

/// Bytes free to an unprivileged user on the file system of `dir` (statvfs's `f_bavail`).
fn free_bytes(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// `bytes` for a log line: `1.5 GiB`, `640.0 MiB`, `512 bytes`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = "bytes";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if unit == "bytes" {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// [`BodyBuffering`] and what is in use of it now, shared by every body.
#[derive(Debug)]
pub(crate) struct SpoolSettings {
    // The limits may change while bodies arrive (a reload): each append reads them anew.
    memory_threshold: AtomicUsize,
    memory_cap: AtomicU64,
    /// The caps in force ([`DiskCaps`]).
    disk_cap: AtomicU64,
    client_disk_cap: AtomicU64,
    request_buffering: AtomicBool,
    min_upload_rate: AtomicU64,
    temp_dir: PathBuf,
    /// The temp directory's free bytes at start, which the caps are sized from on every reload
    /// (measured again, the free space would shrink by the bodies held at that moment).
    free_at_start: Option<u64>,
    memory_used: AtomicU64,
    disk_used: AtomicU64,
    /// Bytes of temp files held per client; a client holding none has no entry.
    disk_used_by: Mutex<HashMap<IpAddr, u64>>,
    files_made: AtomicU64,
}

impl SpoolSettings {
    /// Sizes the caps from the temp directory's free space now, and logs them.
    pub fn new(config: &BodyBuffering) -> SpoolSettings {
        let free = match free_bytes(&config.temp_dir) {
            Ok(free) => Some(free),
            Err(e) => {
                log::warn!(
                    "cannot read the free space of {} ({e}): request body temp files are capped by disk_cap alone",
                    config.temp_dir.display()
                );
                None
            }
        };
        let caps = DiskCaps::of(config, free);
        SpoolSettings {
            memory_threshold: AtomicUsize::new(config.memory_threshold),
            memory_cap: AtomicU64::new(config.memory_cap),
            disk_cap: AtomicU64::new(caps.total),
            client_disk_cap: AtomicU64::new(caps.per_client),
            request_buffering: AtomicBool::new(config.request_buffering),
            min_upload_rate: AtomicU64::new(config.min_upload_rate),
            temp_dir: config.temp_dir.clone(),
            free_at_start: free,
            memory_used: AtomicU64::new(0),
            disk_used: AtomicU64::new(0),
            disk_used_by: Mutex::new(HashMap::new()),
            files_made: AtomicU64::new(0),
        }
    }

    /// New limits (a reload): the next byte of every body is held to them. The temp directory
    /// stays (it is a restart-only setting), and so does the free space the caps are sized from.
    pub fn apply(&self, config: &BodyBuffering) {
        let caps = DiskCaps::of(config, self.free_at_start);
        self.memory_threshold.store(config.memory_threshold, Ordering::Relaxed);
        self.memory_cap.store(config.memory_cap, Ordering::Relaxed);
        self.disk_cap.store(caps.total, Ordering::Relaxed);
        self.client_disk_cap.store(caps.per_client, Ordering::Relaxed);
        self.request_buffering.store(config.request_buffering, Ordering::Relaxed);
        self.min_upload_rate.store(config.min_upload_rate, Ordering::Relaxed);
    }

    /// The caps in force and where they come from, for the start log: `request body temp
    /// files in /tmp: at most 18.0 GiB together, 4.5 GiB per client (72.0 GiB free at start)`.
    pub fn describe(&self) -> String {
        let free =
            self.free_at_start.map_or("free space unknown".to_string(), |f| format!("{} free at start", human(f)));
        format!(
            "request body temp files in {}: at most {} together, {} per client ({free})",
            self.temp_dir.display(),
            human(self.disk_cap.load(Ordering::Relaxed)),
            human(self.client_disk_cap.load(Ordering::Relaxed)),
        )
    }

    /// Counts `bytes` more of `client`'s temp files: refused when all temp files would be over
    /// their cap (`503`), or this client's over its share (`429`).
    fn take_disk(&self, client: IpAddr, bytes: u64) -> Result<(), RequestError> {
        if self.disk_used.fetch_add(bytes, Ordering::Relaxed) + bytes > self.disk_cap.load(Ordering::Relaxed) {
            self.disk_used.fetch_sub(bytes, Ordering::Relaxed);
            return Err(RequestError::BodyStorageFull);
        }
        let mut used_by = self.disk_used_by.lock().unwrap_or_else(|e| e.into_inner());
        let held = used_by.get(&client).copied().unwrap_or(0);
        if held + bytes > self.client_disk_cap.load(Ordering::Relaxed) {
            drop(used_by);
            self.disk_used.fetch_sub(bytes, Ordering::Relaxed);
            return Err(RequestError::BodyShareFull);
        }
        used_by.insert(client, held + bytes);
        Ok(())
    }

    /// Gives back `bytes` of `client`'s temp files (its body ended).
    fn give_back_disk(&self, client: IpAddr, bytes: u64) {
        self.disk_used.fetch_sub(bytes, Ordering::Relaxed);
        let mut used_by = self.disk_used_by.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = used_by.get_mut(&client) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                used_by.remove(&client);
            }
        }
    }

    /// Whether bodies are read whole before dispatch (else they stream).
    pub fn request_buffering(&self) -> bool {
        self.request_buffering.load(Ordering::Relaxed)
    }

    /// The minimum upload rate of streamed bodies, bytes per second (0: none).
    pub fn min_upload_rate(&self) -> u64 {
        self.min_upload_rate.load(Ordering::Relaxed)
    }

    fn memory_threshold(&self) -> usize {
        self.memory_threshold.load(Ordering::Relaxed)
    }

    /// Bytes of request bodies held in memory right now, and in temp files.
    #[cfg(test)]
    pub fn in_use(&self) -> (u64, u64) {
        (self.memory_used.load(Ordering::Relaxed), self.disk_used.load(Ordering::Relaxed))
    }

    /// Bytes of `client`'s temp files right now.
    #[cfg(test)]
    pub fn in_use_by(&self, client: IpAddr) -> u64 {
        self.disk_used_by.lock().unwrap().get(&client).copied().unwrap_or(0)
    }
}

/// A request body as a handler reads it: complete, from memory or from its temp file; or, with
/// request buffering off, streamed from the client as it arrives.
///
/// ```
/// use std::io::Read;
/// let mut body = lb_sync::server::RequestBody::from_bytes(b"hello".to_vec());
/// let mut text = String::new();
/// body.read_to_string(&mut text).unwrap();
/// assert_eq!((text.as_str(), body.len()), ("hello", 5));
/// body.rewind().unwrap();
/// assert_eq!(body.bytes().count(), 5, "a retry reads it again");
/// ```
#[derive(Debug)]
pub struct RequestBody {
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
    read: u64,
    settings: Option<Arc<SpoolSettings>>,
    /// Whose temp file it is: the client the per-client share counts by.
    client: IpAddr,
    /// Memory counted against the settings' cap (capacity at the time it was counted).
    counted_memory: u64,
    /// A body still arriving (request buffering off); `len` is then its declared length.
    stream: Option<Box<UploadStream>>,
}

impl RequestBody {
    /// No body.
    pub fn empty() -> RequestBody {
        RequestBody::from_bytes(Vec::new())
    }

    /// A body held in memory (for handlers and tests that build requests themselves).
    pub fn from_bytes(bytes: Vec<u8>) -> RequestBody {
        let len = bytes.len() as u64;
        RequestBody {
            memory: bytes,
            file: None,
            len,
            read: 0,
            settings: None,
            client: IpAddr::from([0, 0, 0, 0]),
            counted_memory: 0,
            stream: None,
        }
    }

    /// A body to be appended as it arrives from `client`, held to `settings`.
    pub(crate) fn spooling(settings: Arc<SpoolSettings>, client: IpAddr) -> RequestBody {
        RequestBody {
            memory: Vec::new(),
            file: None,
            len: 0,
            read: 0,
            settings: Some(settings),
            client,
            counted_memory: 0,
            stream: None,
        }
    }

    /// A body that streams in as the client sends it; `declared` is its `Content-Length`, if
    /// it has one (a chunked one has none).
    pub(crate) fn streamed(stream: UploadStream, declared: Option<u64>) -> RequestBody {
        let mut body = RequestBody::from_bytes(Vec::new());
        body.len = declared.unwrap_or(0);
        body.stream = Some(Box::new(stream));
        body
    }

    /// The body's length in bytes (for a streamed body: its declared length, 0 if chunked).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the body is empty (a streamed body never is: its end is not known yet).
    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.stream.is_none()
    }

    /// Whether the body streams in as the client sends it (request buffering off): it can be
    /// read once only, and its length is known only if the client declared one.
    pub fn is_streamed(&self) -> bool {
        self.stream.is_some()
    }

    /// The length to announce upstream: a buffered body's, or a streamed body's declared one
    /// (none for a chunked stream, which goes on chunked).
    pub fn known_length(&self) -> Option<u64> {
        match &self.stream {
            Some(_) if self.len == 0 => None,
            _ => Some(self.len),
        }
    }

    /// For a streamed body: while waiting for the client, ask `check` whether the backend has
    /// answered already (then the rest of the body is not waited for). Nothing for a buffered
    /// body, which never waits.
    pub fn watch_for_early_answer(&mut self, check: EarlyAnswerCheck) {
        if let Some(stream) = &mut self.stream {
            stream.watch_for_early_answer(check);
        }
    }

    /// Whether a streamed body was cut short by its client (closed, bad framing, too slow).
    pub fn cut_short(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.cut_short())
    }

    /// Whether the body went to a temp file.
    pub fn on_disk(&self) -> bool {
        self.file.is_some()
    }

    /// Starts reading from the beginning again (a retry sends the same body). A streamed body
    /// cannot, once a byte of it was read.
    pub fn rewind(&mut self) -> io::Result<()> {
        if self.stream.is_some() && self.read > 0 {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "a streamed request body cannot be sent twice"));
        }
        self.read = 0;
        if let Some(file) = &mut self.file {
            file.seek(SeekFrom::Start(0))?;
        }
        Ok(())
    }

    /// Appends decoded bytes while the body arrives: to memory while it stays under the
    /// threshold (and the shared memory cap), else to the temp file.
    pub(crate) fn append(&mut self, data: &[u8]) -> Result<(), RequestError> {
        let Some(settings) = self.settings.clone() else {
            self.memory.extend_from_slice(data);
            self.len += data.len() as u64;
            return Ok(());
        };
        if self.file.is_none() {
            let wanted = self.memory.len() + data.len();
            if wanted <= settings.memory_threshold() && self.reserve_memory(&settings, wanted) {
                self.memory.extend_from_slice(data);
                self.len += data.len() as u64;
                return Ok(());
            }
            self.move_to_file(&settings)?;
        }
        let added = data.len() as u64;
        settings.take_disk(self.client, added)?;
        self.len += added;
        let file = self.file.as_mut().expect("moved to a file above");
        file.write_all(data).map_err(|e| {
            log::warn!("cannot write a request body to a temp file: {e}");
            RequestError::BodyStorageFull
        })
    }

    /// Counts memory up to `wanted` bytes against the shared cap; false when over it.
    fn reserve_memory(&mut self, settings: &SpoolSettings, wanted: usize) -> bool {
        let wanted = wanted as u64;
        if wanted <= self.counted_memory {
            return true;
        }
        // Count in steps of 4 KiB so a trickled body does not touch the atomic per byte.
        let step = (wanted - self.counted_memory).max(4096).min(settings.memory_threshold() as u64);
        let before = settings.memory_used.fetch_add(step, Ordering::Relaxed);
        if before + step > settings.memory_cap.load(Ordering::Relaxed) {
            settings.memory_used.fetch_sub(step, Ordering::Relaxed);
            return false;
        }
        self.counted_memory += step;
        true
    }

    fn move_to_file(&mut self, settings: &SpoolSettings) -> Result<(), RequestError> {
        let n = settings.files_made.fetch_add(1, Ordering::Relaxed);
        let path = settings.temp_dir.join(format!("lb-sync-body-{}-{n}", std::process::id()));
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(|e| {
            log::warn!("cannot create a temp file for a request body in {}: {e}", settings.temp_dir.display());
            RequestError::BodyStorageFull
        })?;
        // Unlinked at once: the open file lives until the body is dropped, the name is gone now.
        let _ = std::fs::remove_file(&path);
        self.file = Some(file);
        let memory = std::mem::take(&mut self.memory);
        self.release_memory();
        self.len = 0;
        if !memory.is_empty() {
            self.append(&memory)?;
        }
        Ok(())
    }

    fn release_memory(&mut self) {
        if let Some(settings) = &self.settings {
            settings.memory_used.fetch_sub(self.counted_memory, Ordering::Relaxed);
        }
        self.counted_memory = 0;
    }

    /// Called when the body is complete: a file is read from its start.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        self.rewind()
    }
}

impl Read for RequestBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match (&mut self.stream, &mut self.file) {
            (Some(stream), _) => stream.read(buf)?,
            (None, Some(file)) => file.read(buf)?,
            (None, None) => {
                let rest = &self.memory[(self.read as usize).min(self.memory.len())..];
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                n
            }
        };
        self.read += n as u64;
        Ok(n)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.release_memory();
        if let (Some(settings), Some(_)) = (&self.settings, &self.file) {
            settings.give_back_disk(self.client, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn small_bodies_stay_in_memory_large_ones_go_to_an_unlinked_file() {
        let dir = std::env::temp_dir().join(format!("lb-sync-spool-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = BodyBuffering {
            memory_threshold: 8,
            memory_cap: 1 << 20,
            disk_cap: 1 << 20,
            temp_dir: dir.clone(),
            ..BodyBuffering::default()
        };
        let settings = Arc::new(SpoolSettings::new(&config));
        let mut small = RequestBody::spooling(Arc::clone(&settings), CLIENT);
        small.append(b"12345678").unwrap();
        assert!(!small.on_disk());
        let mut large = RequestBody::spooling(Arc::clone(&settings), CLIENT);
        large.append(b"12345").unwrap();
        large.append(b"6789").unwrap();
        assert!(large.on_disk());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no name left in the temp dir");
        large.finish().unwrap();
        let mut text = String::new();
        large.read_to_string(&mut text).unwrap();
        assert_eq!(text, "123456789");
        assert_eq!(settings.in_use().1, 9);
        drop((small, large));
        assert_eq!(settings.in_use(), (0, 0), "every byte given back");
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn the_disk_cap_refuses_a_body() {
        let config = BodyBuffering {
            memory_threshold: 0,
            memory_cap: 0,
            disk_cap: 4,
            client_disk_share: 1.0,
            ..BodyBuffering::default()
        };
        let settings = Arc::new(SpoolSettings::new(&config));
        let mut body = RequestBody::spooling(settings, CLIENT);
        assert_eq!(body.append(b"12345"), Err(RequestError::BodyStorageFull));
    }

    #[test]
    fn the_caps_are_the_smaller_of_the_setting_and_a_share_of_the_free_space() {
        let config = BodyBuffering { disk_cap: 1000, ..BodyBuffering::default() };
        assert_eq!(DiskCaps::of(&config, Some(8000)), DiskCaps { total: 1000, per_client: 250 });
        assert_eq!(DiskCaps::of(&config, Some(2000)), DiskCaps { total: 500, per_client: 125 });
        assert_eq!(DiskCaps::of(&config, None), DiskCaps { total: 1000, per_client: 250 }, "free space unknown");
        let whole = BodyBuffering { disk_free_share: 1.0, client_disk_share: 1.0, ..config };
        assert_eq!(DiskCaps::of(&whole, Some(600)), DiskCaps { total: 600, per_client: 600 });
    }

    #[test]
    fn one_client_is_held_to_its_share_while_another_still_spools() {
        let config = BodyBuffering {
            memory_threshold: 0,
            memory_cap: 0,
            disk_cap: 100,
            disk_free_share: 1.0,
            client_disk_share: 0.25,
            ..BodyBuffering::default()
        };
        let settings = Arc::new(SpoolSettings::new(&config));
        let mut first = RequestBody::spooling(Arc::clone(&settings), CLIENT);
        first.append(&[b'a'; 20]).unwrap();
        let mut second = RequestBody::spooling(Arc::clone(&settings), CLIENT);
        assert_eq!(second.append(&[b'b'; 6]), Err(RequestError::BodyShareFull), "25 of 100 per client");
        assert_eq!(second.append(&[b'b'; 5]), Ok(()), "up to the share exactly");
        let mut other = RequestBody::spooling(Arc::clone(&settings), OTHER);
        other.append(&[b'c'; 25]).unwrap();
        assert_eq!((settings.in_use().1, settings.in_use_by(CLIENT), settings.in_use_by(OTHER)), (50, 25, 25));
        drop((first, second));
        assert_eq!(settings.in_use_by(CLIENT), 0, "given back when its bodies end");
        assert!(!settings.disk_used_by.lock().unwrap().contains_key(&CLIENT), "no entry kept for it");
        drop(other);
        assert_eq!(settings.in_use(), (0, 0));
    }

    #[test]
    fn sizes_are_written_for_people() {
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(16 << 30), "16.0 GiB");
    }
}
