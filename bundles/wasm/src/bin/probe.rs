//! Reports what the guest sees: args, env, cwd-relative and absolute files.
//! Usage: probe args | env | read PATH | write PATH TEXT | exit N | ls PATH
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(1) {
        "args" => println!("{}", args.join("|")),
        "env" => {
            let mut vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            vars.sort();
            println!("{}", vars.join("\n"));
        }
        "read" => match std::fs::read_to_string(arg(2)) {
            Ok(s) => print!("{s}"),
            Err(e) => {
                println!("error: {e}");
                std::process::exit(2);
            }
        },
        "write" => match std::fs::write(arg(2), arg(3)) {
            Ok(()) => println!("wrote"),
            Err(e) => {
                println!("error: {e}");
                std::process::exit(2);
            }
        },
        "ls" => match std::fs::read_dir(arg(2)) {
            Ok(d) => {
                let mut names: Vec<String> = d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                names.sort();
                println!("{}", names.join(" "));
            }
            Err(e) => {
                println!("error: {e}");
                std::process::exit(2);
            }
        },
        "exit" => {
            let _ = std::io::stdout().flush();
            std::process::exit(arg(2).parse().unwrap_or(1))
        }
        other => {
            eprintln!("probe: unknown command {other:?}");
            std::process::exit(64);
        }
    }
}
