//! A Python function: counts the words of the `text` query parameter and
//! answers in JSON, with `urllib.parse`, `re`, `collections`, `json` and
//! `base64` from the standard library. Starting RustPython and importing
//! those is most of its start; `wizer.initialize` does both, so that with
//! amphi's pre-initialization every start finds the interpreter and the
//! imported handler in the module's snapshot.
//!
//! Prints whether the interpreter came with the module ("preinitialized")
//! or was started now ("cold"), then the handler's answer for
//! `QUERY_STRING` (under CGI, after a header) or for its first argument.
//!
//! The request's variables are read from WASI itself, not through
//! `std::env`: wasi-libc reads the environment once, the first time it is
//! asked, and the interpreter's start asks; run by `wizer.initialize`,
//! where there is no environment, that start leaves an empty one in the
//! snapshot. (The same holds for Python's `os.environ`.)
use std::cell::OnceCell;

use rustpython::vm::{Interpreter, PyObjectRef};

const HANDLER: &str = r#"
import base64, json, re
from collections import Counter
from urllib.parse import parse_qs

WORD = re.compile(r"[a-z']+")

def handle(query):
    text = parse_qs(query).get("text", [""])[0]
    words = Counter(WORD.findall(text.lower()))
    return json.dumps({
        "words": sum(words.values()),
        "top": words.most_common(2),
        "tag": base64.b16encode(text.encode()).decode()[:8],
    })
"#;

struct Function {
    interpreter: Interpreter,
    handle: PyObjectRef,
    preinitialized: bool,
}

thread_local! {
    static FUNCTION: OnceCell<Function> = const { OnceCell::new() };
}

fn start(preinitialized: bool) -> Function {
    let interpreter = rustpython::InterpreterConfig::new()
        .init_stdlib()
        .interpreter();
    let handle = interpreter.enter(|vm| {
        let scope = vm.new_scope_with_builtins();
        vm.run_code_string(scope.clone(), HANDLER, "<handler>".to_owned())
            .and_then(|_| scope.globals.get_item("handle", vm))
            .unwrap_or_else(|e| {
                vm.print_exception(e);
                std::process::exit(1)
            })
    });
    Function {
        interpreter,
        handle,
        preinitialized,
    }
}

impl Function {
    /// The handler's answer to `query`.
    fn answer(&self, query: &str) -> String {
        self.interpreter.enter(|vm| {
            self.handle
                .call((query.to_owned(),), vm)
                .and_then(|a| a.str(vm).map(|s| s.as_str().to_owned()))
                .unwrap_or_else(|e| {
                    vm.print_exception(e);
                    std::process::exit(1)
                })
        })
    }
}

#[export_name = "wizer.initialize"]
pub extern "C" fn initialize() {
    FUNCTION.with(|f| {
        let function = start(true);
        // One request's worth of work before the snapshot, as Wizer's own
        // users warm up: what the interpreter does lazily the first time
        // (method caches, the regex engine's state, json's encoder) is
        // then in every instance's image instead of redone by each.
        function.answer("text=warm+up+the+interpreter");
        let _ = f.set(function);
    });
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn environ_sizes_get(count: *mut usize, size: *mut usize) -> u16;
    fn environ_get(environ: *mut *mut u8, buf: *mut u8) -> u16;
}

/// The variable `name` of this start's environment, as WASI gives it now.
fn var(name: &str) -> Option<String> {
    let (mut count, mut size) = (0usize, 0usize);
    // SAFETY: WASI writes two sizes, then that many pointers into a
    // buffer of that many bytes, both ours.
    let buf = unsafe {
        if environ_sizes_get(&mut count, &mut size) != 0 {
            return None;
        }
        let mut pointers = vec![std::ptr::null_mut::<u8>(); count];
        let mut buf = vec![0u8; size];
        if environ_get(pointers.as_mut_ptr(), buf.as_mut_ptr()) != 0 {
            return None;
        }
        buf
    };
    buf.split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn main() {
    let cgi = var("GATEWAY_INTERFACE").is_some();
    let query = if cgi {
        var("QUERY_STRING").unwrap_or_default()
    } else {
        std::env::args().nth(1).unwrap_or_default()
    };
    FUNCTION.with(|f| {
        let f = f.get_or_init(|| start(false));
        let answer = f.answer(&query);
        if cgi {
            print!("Content-Type: application/json\r\n\r\n");
        }
        let state = if f.preinitialized { "preinitialized" } else { "cold" };
        println!("{state} {answer}");
    });
}
