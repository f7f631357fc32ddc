//! The compiled-artifact cache: one file per (module digest, engine
//! compatibility hash), written atomically, with a SHA-256 of the artifact
//! at its end. An entry that is missing, truncated, corrupt or stale is
//! compiled anew and replaced; nothing from the cache runs unverified.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use wasmtime::Engine;

const SUM: usize = 32;

#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
    /// The directory, opened where the path still means the host's (the
    /// runtime, before any namespace is joined): `exec` prepares inside
    /// the container's mount namespace, where the path leads nowhere.
    fd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

/// What a load did, for tests and benchmarks (`AMPHI_WASM_CACHE_REPORT`).
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Compiled,
    Recompiled,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        let dir = dir.into();
        let fd = nix::fcntl::open(
            &dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
        .map(std::sync::Arc::new);
        Cache { dir, fd }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The fd the container's init must keep open for the cache to work.
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.fd
            .as_ref()
            .map(|f| std::os::fd::AsRawFd::as_raw_fd(&**f))
    }

    /// Let go of the directory (before the guest runs).
    pub fn close(&mut self) {
        self.fd = None;
    }

    /// The directory as a path valid in any mount namespace.
    fn root(&self) -> PathBuf {
        match self.raw_fd() {
            Some(fd) => PathBuf::from(format!("/proc/self/fd/{fd}")),
            None => self.dir.clone(),
        }
    }

    fn entry(&self, engine: &Engine, module: &[u8]) -> PathBuf {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let digest = Sha256::digest(module);
        self.root()
            .join(format!("{}-{:016x}.cwasm", hex(&digest), h.finish()))
    }

    /// A core module from the cache, or compiled and cached.
    pub fn module(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<wasmtime::Module> {
        self.load_or_compile(
            engine,
            bytes,
            |b| wasmtime::Module::new(engine, b),
            |m| m.serialize(),
            // SAFETY: the artifact was written by this cache for this
            // engine's compatibility hash, and its checksum verified.
            |a| unsafe { wasmtime::Module::deserialize(engine, a) },
        )
    }

    /// A component from the cache, or compiled and cached.
    pub fn component(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> wasmtime::Result<wasmtime::component::Component> {
        self.load_or_compile(
            engine,
            bytes,
            |b| wasmtime::component::Component::new(engine, b),
            |c| c.serialize(),
            // SAFETY: as for modules.
            |a| unsafe { wasmtime::component::Component::deserialize(engine, a) },
        )
    }

    /// The compiled form of `module`: from the cache when a verified entry
    /// exists, else compiled (and stored, best effort: a read-only cache or
    /// one the container's user may not write to only costs the next start).
    fn load_or_compile<T>(
        &self,
        engine: &Engine,
        module: &[u8],
        compile: impl Fn(&[u8]) -> wasmtime::Result<T>,
        serialize: impl Fn(&T) -> wasmtime::Result<Vec<u8>>,
        deserialize: impl Fn(&[u8]) -> wasmtime::Result<T>,
    ) -> wasmtime::Result<T> {
        let path = self.entry(engine, module);
        let mut outcome = Outcome::Compiled;
        if let Ok(data) = std::fs::read(&path) {
            if let Some(artifact) = verified(&data) {
                if let Ok(t) = deserialize(artifact) {
                    report(&Outcome::Hit);
                    return Ok(t);
                }
            }
            outcome = Outcome::Recompiled;
        }
        let t = compile(module)?;
        if let Ok(artifact) = serialize(&t) {
            let _ = self.store(&path, &artifact);
        }
        report(&outcome);
        Ok(t)
    }

    fn store(&self, path: &std::path::Path, artifact: &[u8]) -> amphi_core::Result<()> {
        let mut data = Vec::with_capacity(artifact.len() + SUM);
        data.extend_from_slice(artifact);
        data.extend_from_slice(&Sha256::digest(artifact));
        amphi_core::util::write_atomic(path, &data)
    }
}

fn verified(data: &[u8]) -> Option<&[u8]> {
    let (artifact, sum) = data.split_at(data.len().checked_sub(SUM)?);
    (Sha256::digest(artifact).as_slice() == sum).then_some(artifact)
}

fn report(outcome: &Outcome) {
    if std::env::var_os("AMPHI_WASM_CACHE_REPORT").is_some() {
        eprintln!("amphi: wasm cache: {outcome:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_entries_are_recompiled_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let engine = Engine::default();
        let wat = b"(module (func (export \"f\") (result i32) i32.const 7))";
        let load = || cache.module(&engine, wat).unwrap();
        load();
        let entry = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        assert!(verified(&std::fs::read(&entry).unwrap()).is_some());
        // Flip one byte of the artifact: the checksum catches it.
        let mut data = std::fs::read(&entry).unwrap();
        data[100] ^= 0xff;
        std::fs::write(&entry, &data).unwrap();
        assert!(verified(&data).is_none());
        load();
        assert!(
            verified(&std::fs::read(&entry).unwrap()).is_some(),
            "entry not rewritten"
        );
        // A truncated entry too.
        std::fs::write(&entry, &data[..10]).unwrap();
        load();
        assert!(verified(&std::fs::read(&entry).unwrap()).is_some());
    }
}
