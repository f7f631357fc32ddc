//! The container's side of a checkpoint: the init's socket, the poll the
//! instrumented module calls, the WASI calls whose effects an image must
//! carry (files opened, closed, renumbered), and the loop that runs the
//! guest, unwinds it, sends its image and rewinds it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use wasmtime::{Caller, Func, Instance, Linker, Memory, SharedMemory, Store, Val};

use super::{
    Global as Saved, Image, Manifest, OpenFile, Request, ACK, FLAG_EXPORT, GLOBAL_EXPORT_PREFIX,
    IMAGE_PAGE, MEMORY_EXPORT, POLL_IMPORT, WASI_EXPORT_PREFIX, WASM_PAGE,
};

/// The runtime's region in the guest's memory, grown at the first
/// checkpoint (after the guest's allocator took what it saw at start):
/// scratch space for the runtime's own WASI calls, then Asyncify's data
/// (its header, then the unwound stack).
const SCRATCH: u32 = 4096;
const REGION_PAGES: u64 = 16;
pub(crate) const REGION_MIN: u32 = SCRATCH + 64;

/// The p1 `oflags` that would create or truncate: not on a reopen.
const OFLAGS_CREATE_TRUNCATE: u32 = 1 | 4 | 8;

/// Bound before pivot_root, in the state directory the init holds open.
pub(crate) fn listen(state_dir: BorrowedFd) -> amphi_core::Result<UnixListener> {
    let path = format!("/proc/self/fd/{}/{}", state_dir.as_raw_fd(), super::SOCKET);
    UnixListener::bind(&path)
        .map_err(|e| crate::guest::fail(format!("checkpoint socket {}: {e}", super::SOCKET)))
}

struct Pending {
    conn: UnixStream,
    leave_running: bool,
}

/// The flag every back-edge of the instrumented guest reads: byte 0 of a
/// shared memory of the instrumentation's, known once the guest is
/// instantiated. A request that comes before is raised then.
#[derive(Clone, Default)]
struct Flag(Arc<OnceLock<SharedMemory>>);

impl Flag {
    fn set(&self, value: u8) {
        if let Some(memory) = self.0.get() {
            let byte = memory.data()[0].get();
            // SAFETY: the memory is shared, so written and read atomically
            // from any thread (the guest reads it with `i32.atomic.load8_u`),
            // and `memory` keeps it mapped.
            unsafe { AtomicU8::from_ptr(byte) }.store(value, Ordering::SeqCst);
        }
    }
}

/// Answers connections on the socket for the life of the guest: a request
/// is parked for the guest's next poll and the flag raised, so the guest
/// polls at its next back-edge.
fn serve(listener: UnixListener, pending: Arc<Mutex<Option<Pending>>>, flag: Flag) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let mut line = String::new();
        let request = BufReader::new(&conn)
            .read_line(&mut line)
            .ok()
            .and_then(|_| serde_json::from_str::<Request>(&line).ok());
        let _ = conn.set_read_timeout(None);
        let Some(request) = request else {
            refuse(&mut conn, "a request is one JSON line");
            continue;
        };
        let mut slot = pending.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            refuse(&mut conn, "a checkpoint of this container is under way");
            continue;
        }
        *slot = Some(Pending {
            conn,
            leave_running: request.leave_running,
        });
        drop(slot);
        flag.set(1);
    }
}

fn refuse(conn: &mut UnixStream, why: &str) {
    let mut line = serde_json::to_vec(&serde_json::json!({ "error": why })).expect("json");
    line.push(b'\n');
    let _ = conn.write_all(&line);
}

/// The module's exported WASI wrappers, which the runtime calls: WASI's
/// functions find the guest's memory through their calling instance.
#[derive(Clone, Copy)]
struct Wasi {
    path_open: Func,
    fd_close: Func,
    fd_renumber: Func,
    fd_seek: Func,
}

/// A checkpointable guest's state beside its store's.
pub(crate) struct Session {
    pending: Arc<Mutex<Option<Pending>>>,
    serving: Option<Pending>,
    rewinding: bool,
    flag: Flag,
    /// Start of the runtime's region, once there is one.
    region: Option<u32>,
    files: BTreeMap<u32, OpenFile>,
    wasi: Option<Wasi>,
    module_sha256: String,
    instrumentation: String,
}

impl Session {
    /// A session answering on `listener`, if the container has one (a
    /// process `amphi exec` added has none).
    pub(crate) fn new(
        listener: Option<UnixListener>,
        module_sha256: String,
        instrumentation: String,
    ) -> Session {
        let pending = Arc::new(Mutex::new(None));
        let flag = Flag::default();
        if let Some(listener) = listener {
            let (pending, flag) = (pending.clone(), flag.clone());
            std::thread::spawn(move || serve(listener, pending, flag));
        }
        Session {
            pending,
            serving: None,
            rewinding: false,
            flag,
            region: None,
            files: BTreeMap::new(),
            wasi: None,
            module_sha256,
            instrumentation,
        }
    }
}

/// The store data of a checkpointable guest.
pub(crate) trait HasSession: Send + 'static {
    fn session(&mut self) -> &mut Session;
}

fn memory<T>(caller: &mut Caller<'_, T>) -> wasmtime::Result<Memory> {
    caller
        .get_export(MEMORY_EXPORT)
        .and_then(|e| e.into_memory())
        .ok_or_else(|| wasmtime::format_err!("the instrumented module exports no memory"))
}

fn export_func<T>(caller: &mut Caller<'_, T>, name: &str) -> wasmtime::Result<Func> {
    caller
        .get_export(name)
        .and_then(|e| e.into_func())
        .ok_or_else(|| wasmtime::format_err!("the instrumented module lacks {name}"))
}

/// Defines `amphi.poll` and the hooks that hear of the guest's files.
pub(crate) fn link<T: HasSession>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    let (module, name) = POLL_IMPORT;
    linker.func_wrap_async(module, name, |mut caller: Caller<'_, T>, (): ()| {
        Box::new(async move { poll(&mut caller).await })
    })?;
    #[allow(clippy::too_many_arguments)] // path_open's, and its result
    fn opened<T: HasSession>(
        mut caller: Caller<'_, T>,
        dir_fd: i32,
        lookup_flags: i32,
        path: i32,
        path_len: i32,
        open_flags: i32,
        rb: i64,
        ri: i64,
        fd_flags: i32,
        result: i32,
        errno: i32,
    ) -> wasmtime::Result<()> {
        if errno != 0 {
            return Ok(());
        }
        let memory = memory(&mut caller)?;
        let data = memory.data(&caller);
        let at = |p: i32, n: usize| data.get(p as u32 as usize..).and_then(|d| d.get(..n));
        let path =
            at(path, path_len as u32 as usize).map(|b| String::from_utf8_lossy(b).into_owned());
        let fd = at(result, 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
        if let (Some(path), Some(fd)) = (path, fd) {
            let file = OpenFile {
                fd,
                dir_fd: dir_fd as u32,
                lookup_flags: lookup_flags as u32,
                path,
                open_flags: open_flags as u32,
                rights_base: rb as u64,
                rights_inheriting: ri as u64,
                fd_flags: fd_flags as u32,
                offset: 0,
            };
            caller.data_mut().session().files.insert(fd, file);
        }
        Ok(())
    }
    linker.func_wrap(module, "opened", opened::<T>)?;
    linker.func_wrap(
        module,
        "closed",
        |mut caller: Caller<'_, T>, fd: i32, errno: i32| {
            if errno == 0 {
                caller.data_mut().session().files.remove(&(fd as u32));
            }
        },
    )?;
    linker.func_wrap(
        module,
        "renumbered",
        |mut caller: Caller<'_, T>, from: i32, to: i32, errno: i32| {
            if errno == 0 && from != to {
                let files = &mut caller.data_mut().session().files;
                files.remove(&(to as u32));
                if let Some(mut f) = files.remove(&(from as u32)) {
                    f.fd = to as u32;
                    files.insert(to as u32, f);
                }
            }
        },
    )?;
    Ok(())
}

/// `amphi.poll`: the guest's safe point, reached at a back-edge once the
/// flag is set, and again while rewinding.
async fn poll<T: HasSession>(caller: &mut Caller<'_, T>) -> wasmtime::Result<()> {
    if std::mem::take(&mut caller.data_mut().session().rewinding) {
        let stop = export_func(caller, "asyncify_stop_rewind")?;
        return stop
            .typed::<(), ()>(&*caller)?
            .call_async(&mut *caller, ())
            .await;
    }
    let session = caller.data_mut().session();
    // Lowered before the request is taken: one parked after that raises
    // it again.
    session.flag.set(0);
    let taken = session
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(mut request) = taken else {
        return Ok(());
    };
    let region = match caller.data_mut().session().region {
        Some(r) => r,
        None => {
            // A guest at its memory limit is refused the checkpoint, not
            // ended by it.
            let memory = memory(caller)?;
            let grown = memory.grow(&mut *caller, REGION_PAGES).ok();
            let Some(region) = grown.and_then(|old| u32::try_from(old * WASM_PAGE).ok()) else {
                refuse(
                    &mut request.conn,
                    "the guest's memory cannot grow by the 1 MiB its unwound stack needs \
                     (its limit, or 4 GiB)",
                );
                return Ok(());
            };
            caller.data_mut().session().region = Some(region);
            region
        }
    };
    // Asyncify's header: where its data goes next, and where it ends.
    let data = region + SCRATCH;
    let end = region + (REGION_PAGES * WASM_PAGE) as u32;
    let memory = memory(caller)?;
    memory.write(
        &mut *caller,
        data as usize,
        &[(data + 8).to_le_bytes(), end.to_le_bytes()].concat(),
    )?;
    caller.data_mut().session().serving = Some(request);
    let start = export_func(caller, "asyncify_start_unwind")?;
    start
        .typed::<i32, ()>(&*caller)?
        .call_async(&mut *caller, data as i32)
        .await
}

/// Runs the guest's `_start` in `instance` until it returns for good: each
/// time it unwinds for a checkpoint, the image is sent and the guest ends
/// or (`leave_running`, or an image nobody acknowledged) rewinds. With
/// `image`, the guest first takes that image's state and rewinds into it.
pub(crate) async fn run<T: HasSession>(
    store: &mut Store<T>,
    instance: Instance,
    image: Option<&Image>,
) -> wasmtime::Result<Outcome> {
    let flag = instance
        .get_shared_memory(&mut *store, FLAG_EXPORT)
        .ok_or_else(|| wasmtime::format_err!("the instrumented module lacks {FLAG_EXPORT}"))?;
    let session = store.data_mut().session();
    let _ = session.flag.0.set(flag);
    // A request parked before the guest existed.
    if session
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some()
    {
        session.flag.set(1);
    }
    let wrapper = |store: &mut Store<T>, name: &str| {
        let name = format!("{WASI_EXPORT_PREFIX}{name}");
        instance
            .get_func(&mut *store, &name)
            .ok_or_else(|| wasmtime::format_err!("the instrumented module lacks {name}"))
    };
    let wasi = Wasi {
        path_open: wrapper(store, "path_open")?,
        fd_close: wrapper(store, "fd_close")?,
        fd_renumber: wrapper(store, "fd_renumber")?,
        fd_seek: wrapper(store, "fd_seek")?,
    };
    store.data_mut().session().wasi = Some(wasi);
    let func = |store: &mut Store<T>, name: &str| {
        instance
            .get_func(&mut *store, name)
            .ok_or_else(|| wasmtime::format_err!("the instrumented module lacks {name}"))
    };
    let start = func(store, "_start")?.typed::<(), ()>(&*store)?;
    let state = func(store, "asyncify_get_state")?.typed::<(), i32>(&*store)?;
    let stop_unwind = func(store, "asyncify_stop_unwind")?.typed::<(), ()>(&*store)?;
    let start_rewind = func(store, "asyncify_start_rewind")?.typed::<i32, ()>(&*store)?;
    if let Some(image) = image {
        apply(store, instance, image).await?;
        store.data_mut().session().region = Some(image.manifest.region);
        store.data_mut().session().rewinding = true;
        start_rewind
            .call_async(&mut *store, (image.manifest.region + SCRATCH) as i32)
            .await?;
    }
    loop {
        start.call_async(&mut *store, ()).await?;
        // 1: unwinding, that is, stopped for a checkpoint.
        if state.call_async(&mut *store, ()).await? != 1 {
            return Ok(Outcome::Returned);
        }
        stop_unwind.call_async(&mut *store, ()).await?;
        let request = store
            .data_mut()
            .session()
            .serving
            .take()
            .expect("set by poll");
        let leave_running = request.leave_running;
        if send(store, instance, request).await? && !leave_running {
            return Ok(Outcome::Checkpointed);
        }
        let region = store.data_mut().session().region.expect("set by poll");
        store.data_mut().session().rewinding = true;
        start_rewind
            .call_async(&mut *store, (region + SCRATCH) as i32)
            .await?;
    }
}

/// How a checkpointable guest's run ended.
pub(crate) enum Outcome {
    Returned,
    /// Its image was taken and acknowledged, without `leave_running`.
    Checkpointed,
}

/// Writes the image to the client; true once it acknowledged (then told
/// the client it will act on it).
async fn send<T: HasSession>(
    store: &mut Store<T>,
    instance: Instance,
    mut request: Pending,
) -> wasmtime::Result<bool> {
    let memory = instance
        .get_memory(&mut *store, MEMORY_EXPORT)
        .ok_or_else(|| wasmtime::format_err!("the instrumented module exports no memory"))?;
    // Files' offsets, asked of WASI itself (its position is the guest's).
    let region = store.data_mut().session().region.expect("set by poll");
    let wasi = store.data_mut().session().wasi.expect("linked");
    let seek = wasi.fd_seek.typed::<(i32, i64, i32, i32), i32>(&*store)?;
    let fds: Vec<u32> = store.data_mut().session().files.keys().copied().collect();
    for fd in fds {
        // whence 1: from the current position.
        let errno = seek
            .call_async(&mut *store, (fd as i32, 0, 1, region as i32))
            .await?;
        let mut offset = [0u8; 8];
        if errno == 0 {
            memory.read(&*store, region as usize, &mut offset)?;
        }
        if let Some(f) = store.data_mut().session().files.get_mut(&fd) {
            f.offset = u64::from_le_bytes(offset);
        }
    }
    let mut globals = BTreeMap::new();
    let names: Vec<String> = instance
        .exports(&mut *store)
        .map(|e| e.name().to_owned())
        .filter(|n| n.starts_with(GLOBAL_EXPORT_PREFIX))
        .collect();
    for name in names {
        let index: u32 = name[GLOBAL_EXPORT_PREFIX.len()..].parse()?;
        let global = instance.get_global(&mut *store, &name).expect("listed");
        let value = match global.get(&mut *store) {
            Val::I32(v) => Saved::I32(v as u32),
            Val::I64(v) => Saved::I64(v as u64),
            Val::F32(v) => Saved::F32(v),
            Val::F64(v) => Saved::F64(v),
            other => wasmtime::bail!("global {index}: {other:?} cannot be saved"),
        };
        globals.insert(index, value);
    }
    let session = store.data_mut().session();
    let (module_sha256, instrumentation) = (
        session.module_sha256.clone(),
        session.instrumentation.clone(),
    );
    let files = session.files.values().cloned().collect();
    let data = memory.data(&*store);
    let runs = nonzero_runs(data);
    let manifest = Manifest {
        format: super::FORMAT,
        module_sha256,
        instrumentation,
        memory_pages: data.len() as u64 / WASM_PAGE,
        memory_bytes: runs.iter().map(|r| 16 + r.len() as u64).sum(),
        // The client sums what it receives.
        memory_sha256: String::new(),
        globals,
        region,
        region_bytes: (REGION_PAGES * WASM_PAGE) as u32,
        files,
    };
    let conn = &mut request.conn;
    let sent = (|| -> std::io::Result<bool> {
        let mut head = serde_json::to_vec(&manifest).expect("json");
        head.push(b'\n');
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut *conn);
        out.write_all(&head)?;
        for run in &runs {
            let offset = run.as_ptr() as usize - data.as_ptr() as usize;
            out.write_all(&(offset as u64).to_le_bytes())?;
            out.write_all(&(run.len() as u64).to_le_bytes())?;
            out.write_all(run)?;
        }
        out.flush()?;
        drop(out);
        let mut ack = [0u8; 1];
        conn.read_exact(&mut ack)?;
        Ok(ack[0] == ACK)
    })()
    .unwrap_or(false);
    if sent {
        let _ = conn.write_all(&[ACK]);
    }
    Ok(sent)
}

/// The memory's runs of non-zero [`IMAGE_PAGE`]s.
fn nonzero_runs(data: &[u8]) -> Vec<&[u8]> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, page) in data.chunks(IMAGE_PAGE).enumerate() {
        let zero = is_zero(page);
        match (start, zero) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                runs.push(&data[s * IMAGE_PAGE..i * IMAGE_PAGE]);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push(&data[s * IMAGE_PAGE..]);
    }
    runs
}

fn is_zero(page: &[u8]) -> bool {
    // SAFETY: any bit pattern is a u64.
    let (head, words, tail) = unsafe { page.align_to::<u64>() };
    head.iter().all(|b| *b == 0) && words.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}

/// Gives a fresh instance the image's state: memory, globals, files.
async fn apply<T: HasSession>(
    store: &mut Store<T>,
    instance: Instance,
    image: &Image,
) -> wasmtime::Result<()> {
    let m = &image.manifest;
    let memory = instance
        .get_memory(&mut *store, MEMORY_EXPORT)
        .ok_or_else(|| wasmtime::format_err!("the instrumented module exports no memory"))?;
    let initial = memory.data_size(&*store) as u64;
    let pages = initial / WASM_PAGE;
    if pages > m.memory_pages {
        wasmtime::bail!(
            "the module starts with {pages} pages of memory, more than the image's {}",
            m.memory_pages
        );
    }
    memory.grow(&mut *store, m.memory_pages - pages)?;
    // The data segments wrote the initial memory; the image says what
    // every byte is, zero where it has no run.
    memory.data_mut(&mut *store)[..initial as usize].fill(0);
    for run in image.runs() {
        let (offset, bytes) = run.map_err(|e| wasmtime::format_err!("{e}"))?;
        memory.write(&mut *store, offset as usize, bytes)?;
    }
    for (index, value) in &m.globals {
        let global = instance
            .get_global(&mut *store, &format!("{GLOBAL_EXPORT_PREFIX}{index}"))
            .ok_or_else(|| {
                wasmtime::format_err!("the image has global {index}, the module has not")
            })?;
        global.set(
            &mut *store,
            match *value {
                Saved::I32(v) => Val::I32(v as i32),
                Saved::I64(v) => Val::I64(v as i64),
                Saved::F32(v) => Val::F32(v),
                Saved::F64(v) => Val::F64(v),
            },
        )?;
    }
    reopen(store, memory, m).await
}

/// Opens the image's files again under their numbers, at their offsets:
/// in increasing order, a number not yet in use is reached by opening
/// placeholders up to it (WASI hands out the next free number), one in
/// use (stdio, a preopen the guest replaced) by renumbering onto it.
async fn reopen<T: HasSession>(
    store: &mut Store<T>,
    memory: Memory,
    m: &Manifest,
) -> wasmtime::Result<()> {
    let wasi = store.data_mut().session().wasi.expect("linked");
    let path_open = wasi
        .path_open
        .typed::<(i32, i32, i32, i32, i32, i64, i64, i32, i32), i32>(&*store)?;
    let renumber = wasi.fd_renumber.typed::<(i32, i32), i32>(&*store)?;
    let close = wasi.fd_close.typed::<i32, i32>(&*store)?;
    let seek = wasi.fd_seek.typed::<(i32, i64, i32, i32), i32>(&*store)?;
    let scratch = m.region;
    let result = scratch + SCRATCH - 8;
    let mut placeholders = Vec::new();
    let mut files: Vec<&OpenFile> = m.files.iter().collect();
    files.sort_by_key(|f| f.fd);
    for f in files {
        if f.path.len() >= (SCRATCH - 8) as usize {
            wasmtime::bail!(
                "reopen fd {}: its path is longer than {} bytes",
                f.fd,
                SCRATCH - 8
            );
        }
        memory.write(&mut *store, scratch as usize, f.path.as_bytes())?;
        let args = (
            f.dir_fd as i32,
            f.lookup_flags as i32,
            scratch as i32,
            f.path.len() as i32,
            (f.open_flags & !OFLAGS_CREATE_TRUNCATE) as i32,
            f.rights_base as i64,
            f.rights_inheriting as i64,
            f.fd_flags as i32,
            result as i32,
        );
        let fd = loop {
            let errno = path_open.call_async(&mut *store, args).await?;
            if errno != 0 {
                wasmtime::bail!(
                    "reopen {:?} as fd {} (relative to fd {}): WASI errno {errno}; the file \
                     must be where it was when the checkpoint was taken",
                    f.path,
                    f.fd,
                    f.dir_fd
                );
            }
            let mut fd = [0u8; 4];
            memory.read(&*store, result as usize, &mut fd)?;
            let fd = u32::from_le_bytes(fd);
            if fd >= f.fd {
                break fd;
            }
            placeholders.push(fd);
        };
        if fd != f.fd {
            let errno = renumber
                .call_async(&mut *store, (fd as i32, f.fd as i32))
                .await?;
            if errno != 0 {
                wasmtime::bail!(
                    "reopen {:?}: cannot make it fd {}: WASI errno {errno}",
                    f.path,
                    f.fd
                );
            }
        }
        if f.offset > 0 {
            seek.call_async(
                &mut *store,
                (f.fd as i32, f.offset as i64, 0, result as i32),
            )
            .await?;
        }
        // The hooks recorded the file under its number; its offset is
        // read again at the next checkpoint.
    }
    for fd in placeholders {
        close.call_async(&mut *store, fd as i32).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cover_exactly_the_nonzero_pages() {
        let mut data = vec![0u8; IMAGE_PAGE * 6];
        data[IMAGE_PAGE + 5] = 1;
        data[IMAGE_PAGE * 2 + 7] = 2;
        data[IMAGE_PAGE * 5] = 3;
        let runs = nonzero_runs(&data);
        let spans: Vec<(usize, usize)> = runs
            .iter()
            .map(|r| (r.as_ptr() as usize - data.as_ptr() as usize, r.len()))
            .collect();
        assert_eq!(
            spans,
            [(IMAGE_PAGE, 2 * IMAGE_PAGE), (5 * IMAGE_PAGE, IMAGE_PAGE)]
        );
    }
}
