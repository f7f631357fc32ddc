//! containerd-shim-amphi-v2: containerd's runtime v2 shim for amphi, so that
//! containerd (and Kubernetes through a RuntimeClass) runs native and wasm
//! containers with one runtime type, `io.containerd.amphi.v2`. The executor
//! is chosen per container by amphi itself (annotations, or the `\0asm`
//! magic of the entrypoint when containerd passes no annotation).

mod amphi;
mod io;
mod metrics;
mod options;
mod reaper;
mod service;

use std::sync::Arc;

use containerd_shim::{api, publisher::RemotePublisher, Config, ExitSignal, Flags, StartOpts};

/// How long the ttrpc server may take to stop once containerd told the
/// shim to leave.
const SERVER_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How many more times a dead shim's clean-up runs `amphi delete` when it
/// fails, a second apart.
const DEAD_SHIM_DELETE_RETRIES: usize = 5;

struct Shim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
}

/// A pod's containers share one shim: CRI marks them with the sandbox id.
fn grouping(id: &str) -> String {
    let spec = std::fs::read("config.json")
        .ok()
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok());
    spec.as_ref()
        .and_then(|s| s["annotations"]["io.kubernetes.cri.sandbox-id"].as_str())
        .unwrap_or(id)
        .to_owned()
}

impl containerd_shim::Shim for Shim {
    type T = service::Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Shim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let group = grouping(&opts.id);
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &group);
        // Another container of the pod started the shim already: share it.
        let path = address.trim_start_matches("unix://");
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            containerd_shim::util::write_address(&address)?;
            return Ok(address);
        }
        let (_pid, address) = containerd_shim::spawn(opts, &group, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// containerd's clean-up after a shim died: remove the container, its
    /// processes and rootfs mount (the bundle is the working directory).
    fn delete_shim(&mut self) -> Result<api::DeleteResponse, containerd_shim::Error> {
        let bundle = std::env::current_dir().unwrap_or_default();
        let amphi = amphi::Amphi::new(&self.namespace, &bundle, &options::Options::load(&bundle));
        std::thread::spawn(|| reaper::REAPER.run());
        // amphi keeps a container whose cgroup is still busy (a process
        // its new parent has not reaped yet) and asks for another delete:
        // this clean-up is the last delete the container gets, so it tries
        // again for a few seconds, then says why in containerd's log.
        let delete = || amphi.run(&["delete", "--force", &self.id], Default::default(), None);
        let mut outcome = delete();
        for _ in 0..DEAD_SHIM_DELETE_RETRIES {
            if outcome.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
            outcome = delete();
        }
        let rootfs = bundle.join("rootfs");
        if let Ok(c) = std::ffi::CString::new(rootfs.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if let Err(e) = outcome {
            return Err(containerd_shim::Error::Other(format!(
                "clean-up of {} after its shim died: amphi delete --force: {e}",
                self.id
            )));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(api::DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: containerd_shim::protos::protobuf::MessageField::some(
                containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: now.subsec_nanos() as i32,
                    ..Default::default()
                },
            ),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        log::info!("shim {}: told to leave", self.id);
        // What follows is the crate's graceful stop of its ttrpc server,
        // which joins every connection's threads: one handler that never
        // returns would keep this shim, forgotten by containerd, forever.
        // Go shims do not wait for their handlers either.
        let id = self.id.clone();
        std::thread::spawn(move || {
            std::thread::sleep(SERVER_STOP_GRACE);
            log::warn!(
                "shim {id}: the ttrpc server did not stop in {} s; leaving without it",
                SERVER_STOP_GRACE.as_secs()
            );
            if let Ok(address) = std::fs::read_to_string("address") {
                let _ = std::fs::remove_file(address.trim().trim_start_matches("unix://"));
            }
            std::process::exit(0);
        });
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        std::thread::spawn(|| reaper::REAPER.run());
        service::Service::new(self.exit.clone(), publisher, self.namespace.clone())
    }
}

fn main() {
    // containerd discards a shim's stderr: a panic goes to its log, where
    // containerd shows it, not nowhere.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        log::error!("panic: {info}");
        default_hook(info);
    }));
    containerd_shim::run::<Shim>(
        "io.containerd.amphi.v2",
        Some(Config {
            // The shim's own reaper hands exits to their waiters; the
            // crate's would take them first.
            no_reaper: true,
            ..Default::default()
        }),
    );
}
