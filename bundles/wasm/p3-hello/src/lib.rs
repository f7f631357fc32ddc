//! WASI 0.3's `wasi:cli/command`: prints a greeting with its arguments and
//! `GREETING` from its environment, then acts on its arguments in turn:
//! `read PATH` prints a file read through the preopen `/`, `stderr TEXT`
//! writes to stderr, `fail` ends with `run` returning an error (exit 1),
//! `sleep` waits a minute in the host's clock (an async host call, for
//! signals), `alloc MIB` grows a vector that big (for memory limits).
use wasip3::cli::{environment, stderr, stdout};
use wasip3::filesystem::{preopens, types};
use wasip3::wit_stream;

struct Command;

wasip3::cli::command::export!(Command);

async fn write(to_stderr: bool, bytes: Vec<u8>) {
    let (mut tx, rx) = wit_stream::new();
    let done = if to_stderr {
        stderr::write_via_stream(rx)
    } else {
        stdout::write_via_stream(rx)
    };
    let (_, result) = futures::join!(
        async move {
            let rest = tx.write_all(bytes).await;
            drop(tx);
            rest
        },
        std::future::IntoFuture::into_future(done)
    );
    result.expect("stdio write");
}

async fn read(path: &str) -> Result<Vec<u8>, String> {
    let (root, _) = preopens::get_directories()
        .into_iter()
        .find(|(_, name)| name == "/")
        .ok_or("no preopen named /")?;
    let file = root
        .open_at(
            types::PathFlags::empty(),
            path.trim_start_matches('/').to_owned(),
            types::OpenFlags::empty(),
            types::DescriptorFlags::READ,
        )
        .await
        .map_err(|e| format!("open {path}: {e:?}"))?;
    let (rx, done) = file.read_via_stream(0);
    let data = rx.collect().await;
    done.await.map_err(|e| format!("read {path}: {e:?}"))?;
    Ok(data)
}

impl wasip3::exports::cli::run::Guest for Command {
    async fn run() -> Result<(), ()> {
        let args = environment::get_arguments();
        let greeting = environment::get_environment()
            .into_iter()
            .find(|(k, _)| k == "GREETING")
            .map(|(_, v)| v)
            .unwrap_or_default();
        write(
            false,
            format!("hello from wasi 0.3: args={:?} GREETING={greeting}\n", &args[1..]).into_bytes(),
        )
        .await;
        let mut rest = args.iter().skip(1);
        while let Some(arg) = rest.next() {
            match (arg.as_str(), rest.clone().next()) {
                ("read", Some(path)) => {
                    rest.next();
                    match read(path).await {
                        Ok(data) => write(false, data).await,
                        Err(e) => {
                            write(true, format!("{e}\n").into_bytes()).await;
                            return Err(());
                        }
                    }
                }
                ("stderr", Some(text)) => {
                    rest.next();
                    write(true, format!("{text}\n").into_bytes()).await;
                }
                ("fail", _) => return Err(()),
                ("sleep", _) => {
                    write(false, b"sleeping\n".to_vec()).await;
                    wasip3::clocks::monotonic_clock::wait_for(60_000_000_000).await;
                }
                ("alloc", Some(mib)) => {
                    let mib: usize = mib.parse().unwrap_or(0);
                    rest.next();
                    let grown = vec![1u8; mib << 20];
                    write(false, format!("allocated {} MiB\n", grown.len() >> 20).into_bytes()).await;
                }
                _ => {}
            }
        }
        Ok(())
    }
}
