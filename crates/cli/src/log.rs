//! `--log` / `--log-format`: containerd's runc shim reads the last JSON line
//! `{"level","msg","time"}` of the log to report why a command failed.

use std::io::Write;
use std::path::Path;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub struct Logger {
    file: Option<std::fs::File>,
    format: Format,
}

impl Logger {
    pub fn new(path: Option<&Path>, format: Format) -> Logger {
        let file = path.and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        Logger { file, format }
    }

    pub fn error(&self, msg: &str) {
        self.write("error", msg);
    }

    pub fn warn(&self, msg: &str) {
        self.write("warning", msg);
    }

    fn write(&self, level: &str, msg: &str) {
        let Some(mut f) = self.file.as_ref() else {
            return;
        };
        let time = amphi_core::util::rfc3339_now();
        let line = match self.format {
            Format::Json => {
                serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
            }
            Format::Text => format!("time={time:?} level={level} msg={msg:?}"),
        };
        let _ = writeln!(f, "{line}");
    }
}
