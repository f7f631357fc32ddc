//! Checkpoint and restore of a wasm container, without CRIU.
//!
//! A container whose bundle says [`ANNOTATION`]`=true` runs its module in
//! checkpointable form ([`instrument`]): wasmtime's epoch tick sets a flag
//! the module polls at every loop back-edge, and the poll unwinds the
//! guest's stack into its own linear memory (Binaryen's Asyncify). The
//! image is then what a wasm guest is and nothing of the host's: the
//! memory's non-zero pages, the mutable globals, the unwound stack (inside
//! the memory) and the WASI state the runtime tracks (files the guest
//! opened, with their offsets). Restore instantiates the same module in a
//! new container, writes that state back, reopens the files and rewinds.
//!
//! `amphi checkpoint` talks to the container's init over [`SOCKET`] in
//! its state directory (bound before pivot_root): it asks, the guest
//! stops at its next safe point and streams the image back, the client
//! writes it and acknowledges; without that acknowledgement (a full disk,
//! a killed client) the guest runs on.

pub(crate) mod guest;
pub mod instrument;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hex;

/// The bundle annotation that makes a wasm container checkpointable.
pub const ANNOTATION: &str = "io.github.amphi.checkpoint";

/// The init's socket, in the container's state directory.
pub const SOCKET: &str = "checkpoint.sock";

/// An image's description and its memory, in the image directory.
pub const MANIFEST: &str = "amphi-wasm.json";
pub const MEMORY: &str = "memory.img";
/// podman restores only from a directory holding CRIU's `inventory.img`:
/// a wasm image holds a file of that name saying what it is instead.
pub const INVENTORY_MARKER: &str = "inventory.img";

/// Names the instrumentation gives the module.
pub(crate) const POLL_IMPORT: (&str, &str) = ("amphi", "poll");
pub(crate) const FLAG_EXPORT: &str = "amphi_checkpoint_flag";
pub(crate) const MEMORY_EXPORT: &str = "amphi_memory";
pub(crate) const GLOBAL_EXPORT_PREFIX: &str = "amphi_global_";
pub(crate) const WASI_EXPORT_PREFIX: &str = "amphi_wasi_";

/// Version of amphi's own pass; with Binaryen's, what an image needs to
/// find again to rewind.
const PASS_VERSION: u32 = 4;
const FORMAT: u32 = 1;

/// Whether the bundle asks for checkpoints.
pub fn wanted(spec: &oci_spec::runtime::Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// What instrumented a module: part of its cache key and of its images.
pub fn instrumentation() -> Result<String, String> {
    Ok(format!(
        "amphi-polls-{PASS_VERSION} + {}",
        instrument::tool_version()?
    ))
}

/// A mutable global's value, as its bits.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(tag = "type", content = "bits", rename_all = "lowercase")]
pub enum Global {
    I32(u32),
    I64(u64),
    F32(u32),
    F64(u64),
}

/// A file the guest opened (`path_open`), to open again on restore.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct OpenFile {
    pub fd: u32,
    /// The directory fd it was opened relative to (a preopen, or a
    /// directory the guest opened before it).
    pub dir_fd: u32,
    pub lookup_flags: u32,
    pub path: String,
    pub open_flags: u32,
    pub rights_base: u64,
    pub rights_inheriting: u64,
    pub fd_flags: u32,
    /// The guest's position in it when the checkpoint was taken.
    pub offset: u64,
}

/// The image's description ([`MANIFEST`]).
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// SHA-256 of the module as the bundle has it (before instrumenting).
    pub module_sha256: String,
    pub instrumentation: String,
    /// The memory's size in wasm pages (64 KiB) when it was taken.
    pub memory_pages: u64,
    /// [`MEMORY`]: its size and SHA-256, so a truncated or damaged image is
    /// refused before anything is created.
    pub memory_bytes: u64,
    pub memory_sha256: String,
    /// Mutable globals by index (`__stack_pointer` among them).
    pub globals: BTreeMap<u32, Global>,
    /// Where the runtime's region in the guest's memory starts (the
    /// unwound stack, and room for the runtime's own calls).
    pub region: u32,
    pub region_bytes: u32,
    pub files: Vec<OpenFile>,
}

/// A wasm page.
pub(crate) const WASM_PAGE: u64 = 65536;
/// The granularity of [`MEMORY`]: runs of non-zero 4 KiB pages, each
/// `offset: u64 LE, length: u64 LE, bytes`.
pub(crate) const IMAGE_PAGE: usize = 4096;

/// An image read and checked: its description and its memory runs.
pub struct Image {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub(crate) memory: Vec<u8>,
}

impl Image {
    /// Reads the image in `dir` and checks it whole, so that a damaged one
    /// is refused before any container exists.
    pub fn load(dir: &Path) -> Result<Image, String> {
        let what = |name: &str| format!("--image-path {}: {name}", dir.join(name).display());
        let text =
            std::fs::read(dir.join(MANIFEST)).map_err(|e| format!("{}: {e}", what(MANIFEST)))?;
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
            format!(
                "{}: {e}; the image is damaged: make it again with amphi checkpoint",
                what(MANIFEST)
            )
        })?;
        if manifest.format != FORMAT {
            return Err(format!(
                "{}: format {}, this amphi reads format {FORMAT}",
                what(MANIFEST),
                manifest.format
            ));
        }
        let memory =
            std::fs::read(dir.join(MEMORY)).map_err(|e| format!("{}: {e}", what(MEMORY)))?;
        if memory.len() as u64 != manifest.memory_bytes {
            return Err(format!(
                "{}: {} bytes where {MANIFEST} says {}; the image is truncated or damaged",
                what(MEMORY),
                memory.len(),
                manifest.memory_bytes
            ));
        }
        let sum = hex(&Sha256::digest(&memory));
        if sum != manifest.memory_sha256 {
            return Err(format!(
                "{}: SHA-256 {sum} where {MANIFEST} says {}; the image is damaged",
                what(MEMORY),
                manifest.memory_sha256
            ));
        }
        let image = Image {
            dir: dir.to_owned(),
            manifest,
            memory,
        };
        let size = image.manifest.memory_pages * WASM_PAGE;
        for run in image.runs() {
            let (offset, bytes) = run.map_err(|e| format!("{}: {e}", what(MEMORY)))?;
            if offset + bytes.len() as u64 > size {
                return Err(format!(
                    "{}: a run at {offset} ends past the memory's {size} bytes",
                    what(MEMORY)
                ));
            }
        }
        let region_end = u64::from(image.manifest.region) + u64::from(image.manifest.region_bytes);
        if region_end > size || image.manifest.region_bytes < guest::REGION_MIN {
            return Err(format!(
                "{}: the runtime's region {}+{} is not inside the memory",
                what(MANIFEST),
                image.manifest.region,
                image.manifest.region_bytes
            ));
        }
        Ok(image)
    }

    /// The memory's non-zero runs, in order.
    pub(crate) fn runs(&self) -> impl Iterator<Item = Result<(u64, &[u8]), String>> {
        let mut rest = self.memory.as_slice();
        let mut last_end = 0u64;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let run = (|| {
                let head: [u8; 16] = rest
                    .get(..16)
                    .ok_or("a run's header is cut short")?
                    .try_into()
                    .unwrap();
                let offset = u64::from_le_bytes(head[..8].try_into().unwrap());
                let len = u64::from_le_bytes(head[8..].try_into().unwrap());
                if offset < last_end || offset % IMAGE_PAGE as u64 != 0 {
                    return Err(format!("a run at {offset} overlaps or is not page-aligned"));
                }
                let bytes = rest
                    .get(16..)
                    .and_then(|r| r.get(..usize::try_from(len).ok()?))
                    .ok_or(format!("the run at {offset} is cut short"))?;
                rest = &rest[16 + bytes.len()..];
                last_end = offset + len;
                Ok((offset, bytes))
            })();
            if run.is_err() {
                rest = &[];
            }
            Some(run)
        })
    }
}

/// The request the client sends, one JSON line.
#[derive(Serialize, Deserialize)]
pub(crate) struct Request {
    pub leave_running: bool,
}

/// The client's answer once the image is written: [`ACK`] lets the guest
/// stop (or go on, with `leave_running`); anything else (or nothing) and
/// it goes on as if no checkpoint had been asked for.
pub(crate) const ACK: u8 = b'k';

/// How long `amphi checkpoint` waits for the guest's next safe point: a
/// guest blocked in a host call (a read, a long sleep) reaches it only
/// when the call returns.
pub const SAFE_POINT_WAIT: Duration = Duration::from_secs(30);

/// Asks the container whose state directory is `state_dir` for its image
/// and writes it to `image_dir`. Returns once the guest acknowledged: with
/// `leave_running` it runs on, else it has exited or is exiting.
pub fn checkpoint(state_dir: &Path, image_dir: &Path, leave_running: bool) -> Result<(), String> {
    let socket = state_dir.join(SOCKET);
    let mut conn = UnixStream::connect(&socket).map_err(|e| {
        format!(
            "{}: {e}; only wasm containers whose bundle has the annotation \
             {ANNOTATION}=true take checkpoints",
            socket.display()
        )
    })?;
    conn.set_read_timeout(Some(SAFE_POINT_WAIT))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(&Request { leave_running }).expect("json");
    line.push(b'\n');
    conn.write_all(&line)
        .map_err(|e| format!("send the request: {e}"))?;
    let mut reader = BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
    let mut head = String::new();
    match reader.read_line(&mut head) {
        Ok(0) => return Err("the container's init closed the connection: it is exiting".into()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            return Err(format!(
                "the guest did not reach a safe point in {} s: it is blocked in a host call \
                 (a read, a long sleep); it was left running, try again",
                SAFE_POINT_WAIT.as_secs()
            ))
        }
        Err(e) => return Err(format!("read the image: {e}")),
    }
    let mut manifest: Manifest =
        serde_json::from_str(&head).map_err(|e| {
            match serde_json::from_str::<serde_json::Value>(&head) {
                Ok(v) if v.get("error").is_some() => {
                    v["error"].as_str().unwrap_or_default().to_owned()
                }
                _ => format!("the image's description: {e}"),
            }
        })?;
    std::fs::create_dir_all(image_dir)
        .map_err(|e| format!("mkdir {}: {e}", image_dir.display()))?;
    let memory_path = image_dir.join(MEMORY);
    let mut memory = std::fs::File::create(&memory_path)
        .map_err(|e| format!("create {}: {e}", memory_path.display()))?;
    let mut sum = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = manifest.memory_bytes;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = reader
            .read(&mut buf[..want])
            .map_err(|e| format!("read the image: {e}"))?;
        if n == 0 {
            return Err("the container's init stopped sending the image".into());
        }
        sum.update(&buf[..n]);
        memory
            .write_all(&buf[..n])
            .map_err(|e| format!("write {}: {e}", memory_path.display()))?;
        left -= n as u64;
    }
    manifest.memory_sha256 = hex(&sum.finalize());
    let text = serde_json::to_vec_pretty(&manifest).expect("json");
    amphi_core::paths::write_file(&image_dir.join(MANIFEST), &text).map_err(|e| e.to_string())?;
    let marker =
        format!("not a CRIU image: amphi's image of a wasm guest, described by {MANIFEST}\n");
    amphi_core::paths::write_file(&image_dir.join(INVENTORY_MARKER), marker.as_bytes())
        .map_err(|e| e.to_string())?;
    conn.write_all(&[ACK])
        .map_err(|e| format!("acknowledge the image: {e}"))?;
    // The init answers once it acted on the acknowledgement.
    let mut done = [0u8; 1];
    let _ = reader.read(&mut done);
    Ok(())
}
