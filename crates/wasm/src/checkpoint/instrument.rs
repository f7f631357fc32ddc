//! Makes a core module checkpointable, in two steps.
//!
//! 1. amphi's own pass (wasmparser in, wasm-encoder out): every `loop`
//!    starts with `if (global.get $flag) (call $amphi.poll)`, so a guest
//!    that never calls the host still reaches a safe point within one
//!    iteration once the runtime sets the flag; every mutable global and
//!    memory 0 is exported, so
//!    the runtime can read and write them (`__stack_pointer` above all);
//!    and the guest's `path_open`, `fd_close` and `fd_renumber` go through
//!    wrappers in the module that report each call's outcome to the
//!    runtime (`amphi.opened`, ...), which so knows the files to reopen.
//!    The wrappers, and one of `fd_seek`, are exported: the runtime reopens
//!    and seeks through them, as WASI's functions find the guest's memory
//!    through their calling instance and so must be called from wasm.
//! 2. Binaryen's Asyncify (`wasm-opt --asyncify`) with `amphi.poll` as the
//!    only import that unwinds: a call to it can unwind the whole wasm
//!    stack into linear memory and later rewind it, in a new process.
//! 3. The flag moves from that global into a one-page shared memory of
//!    its own, which each back-edge reads with an atomic load: the
//!    runtime's checkpoint thread raises it whenever a request comes,
//!    while the guest runs (wasmtime lets nobody write a wasm global
//!    then, not even its epoch callback). A step of its own after
//!    Asyncify, because Binaryen 108 (Debian 12's) reads no module with a
//!    second memory.
//!
//! What cannot be carried is refused here, naming it, rather than restored
//! wrong: a second or 64-bit or shared memory, tables the guest changes
//! (their contents are restored from the module's element segments),
//! imported mutable globals and globals of reference or vector type.

use std::io::Write;
use std::process::{Command, Stdio};

use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{ConstExpr, EntityType, ExportKind, GlobalType, Instruction, ValType};
use wasmparser::{Operator, Parser, Payload, TypeRef};

use super::{FLAG_EXPORT, GLOBAL_EXPORT_PREFIX, MEMORY_EXPORT, POLL_IMPORT, WASI_EXPORT_PREFIX};

/// What step 1 needs to know of the module before rewriting it.
#[derive(Default)]
struct Shape {
    types: u32,
    imported_funcs: u32,
    imported_globals: u32,
    defined_globals: u32,
    mutable_globals: Vec<u32>,
    defined_funcs: u32,
    /// The guest's own imports of the WASI calls that are wrapped.
    wasi_imports: [Option<u32>; 3],
    has_imports: bool,
    has_globals: bool,
    has_exports: bool,
}

/// The WASI calls whose effects the runtime tracks, in [`Shape::wasi_imports`]
/// order, with the hook each reports to.
const TRACKED: [(&str, &str); 3] = [
    ("path_open", "opened"),
    ("fd_close", "closed"),
    ("fd_renumber", "renumbered"),
];
const WASI: &str = "wasi_snapshot_preview1";

fn shape(bytes: &[u8]) -> Result<Shape, String> {
    let mut s = Shape::default();
    let mut memories = 0;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| e.to_string())? {
            Payload::Version {
                encoding: wasmparser::Encoding::Component,
                ..
            } => {
                return Err(
                    "a component; only core modules (wasm32-wasip1) can be checkpointed \
                            so far"
                        .into(),
                )
            }
            Payload::TypeSection(r) => {
                for group in r {
                    s.types += group.map_err(|e| e.to_string())?.types().len() as u32;
                }
            }
            Payload::ImportSection(r) => {
                s.has_imports = true;
                for import in r.into_imports() {
                    let import = import.map_err(|e| e.to_string())?;
                    match import.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => {
                            if import.module == WASI {
                                if let Some(k) = TRACKED.iter().position(|(n, _)| *n == import.name)
                                {
                                    s.wasi_imports[k] = Some(s.imported_funcs);
                                }
                            }
                            s.imported_funcs += 1;
                        }
                        TypeRef::Global(g) if g.mutable => {
                            return Err(format!(
                                "it imports the mutable global {}.{}, whose value lives \
                                 outside it",
                                import.module, import.name
                            ))
                        }
                        TypeRef::Global(_) => s.imported_globals += 1,
                        TypeRef::Memory(m) => {
                            memories += 1;
                            check_memory(&m)?;
                        }
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(r) => s.defined_funcs = r.count(),
            Payload::MemorySection(r) => {
                for m in r {
                    memories += 1;
                    check_memory(&m.map_err(|e| e.to_string())?)?;
                }
            }
            Payload::GlobalSection(r) => {
                s.has_globals = true;
                for g in r {
                    let g = g.map_err(|e| e.to_string())?;
                    let index = s.imported_globals + s.defined_globals;
                    s.defined_globals += 1;
                    if g.ty.mutable {
                        if !matches!(
                            g.ty.content_type,
                            wasmparser::ValType::I32
                                | wasmparser::ValType::I64
                                | wasmparser::ValType::F32
                                | wasmparser::ValType::F64
                        ) {
                            return Err(format!(
                                "its mutable global {index} is of type {}, which an image \
                                 cannot carry",
                                g.ty.content_type
                            ));
                        }
                        s.mutable_globals.push(index);
                    }
                }
            }
            Payload::ExportSection(r) => {
                s.has_exports = true;
                for e in r {
                    if e.map_err(|e| e.to_string())?.name.starts_with("asyncify_") {
                        return Err("it is instrumented by Asyncify already".into());
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader().map_err(|e| e.to_string())?;
                while !ops.eof() {
                    if let Some(what) = changes_a_table(&ops.read().map_err(|e| e.to_string())?) {
                        return Err(format!(
                            "it changes a table at run time ({what}), and tables are \
                             restored from the module"
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    if memories != 1 {
        return Err(format!(
            "it has {memories} memories; a checkpoint carries exactly one"
        ));
    }
    Ok(s)
}

fn check_memory(m: &wasmparser::MemoryType) -> Result<(), String> {
    if m.memory64 {
        return Err("its memory is 64-bit, which Asyncify does not instrument".into());
    }
    if m.shared {
        return Err(
            "its memory is shared (threads), whose other threads a checkpoint \
                    cannot stop"
                .into(),
        );
    }
    Ok(())
}

fn changes_a_table(op: &Operator) -> Option<&'static str> {
    Some(match op {
        Operator::TableSet { .. } => "table.set",
        Operator::TableGrow { .. } => "table.grow",
        Operator::TableFill { .. } => "table.fill",
        Operator::TableCopy { .. } => "table.copy",
        Operator::TableInit { .. } => "table.init",
        _ => return None,
    })
}

/// The function types the pass adds, in this order.
fn added_types() -> [(Vec<ValType>, Vec<ValType>); 8] {
    use ValType::{I32, I64};
    let path_open = vec![I32, I32, I32, I32, I32, I64, I64, I32, I32];
    let opened = [path_open.clone(), vec![I32]].concat();
    [
        (vec![], vec![]),
        (opened, vec![]),
        (vec![I32, I32], vec![]),
        (vec![I32, I32, I32], vec![]),
        (path_open, vec![I32]),
        (vec![I32], vec![I32]),
        (vec![I32, I32], vec![I32]),
        (vec![I32, I64, I32, I32], vec![I32]),
    ]
}

/// The function imports the pass adds after the module's own, with the
/// position of their type in [`added_types`]: the poll, the hooks that
/// hear of tracked calls, and the WASI functions the wrappers call.
const ADDED_IMPORTS: [(&str, &str); 8] = [
    POLL_IMPORT,
    (HOOKS, "opened"),
    (HOOKS, "closed"),
    (HOOKS, "renumbered"),
    (WASI, "path_open"),
    (WASI, "fd_close"),
    (WASI, "fd_renumber"),
    (WASI, "fd_seek"),
];
const HOOKS: &str = POLL_IMPORT.0;

/// The wrappers the pass defines after the module's own functions, each
/// of the type of the WASI function it calls (import 4 + position), and
/// exported as [`WASI_EXPORT_PREFIX`] + name.
const WRAPPERS: [&str; 4] = ["path_open", "fd_close", "fd_renumber", "fd_seek"];

/// Step 1's rewriter: the defaults re-encode, these hooks add.
struct Polls {
    shape: Shape,
    /// Index of the first added type, and of the flag global.
    first_type: u32,
    flag: u32,
    added_imports: bool,
    added_global: bool,
    added_exports: bool,
}

impl Polls {
    fn added_import(&self, position: usize) -> u32 {
        self.shape.imported_funcs + position as u32
    }

    fn wrapper(&self, position: usize) -> u32 {
        self.shape.imported_funcs
            + ADDED_IMPORTS.len() as u32
            + self.shape.defined_funcs
            + position as u32
    }

    fn imports(&mut self, imports: &mut wasm_encoder::ImportSection) {
        for (i, (module, name)) in ADDED_IMPORTS.iter().enumerate() {
            imports.import(
                module,
                name,
                EntityType::Function(self.first_type + i as u32),
            );
        }
        self.added_imports = true;
    }

    fn flag_global(&mut self, globals: &mut wasm_encoder::GlobalSection) {
        globals.global(
            GlobalType {
                val_type: ValType::I32,
                mutable: true,
                shared: false,
            },
            &ConstExpr::i32_const(0),
        );
        self.added_global = true;
    }

    fn exports(&mut self, exports: &mut wasm_encoder::ExportSection) {
        exports.export(FLAG_EXPORT, ExportKind::Global, self.flag);
        exports.export(MEMORY_EXPORT, ExportKind::Memory, 0);
        for g in &self.shape.mutable_globals {
            exports.export(
                &format!("{GLOBAL_EXPORT_PREFIX}{g}"),
                ExportKind::Global,
                *g,
            );
        }
        for (j, name) in WRAPPERS.iter().enumerate() {
            exports.export(
                &format!("{WASI_EXPORT_PREFIX}{name}"),
                ExportKind::Func,
                self.wrapper(j),
            );
        }
        self.added_exports = true;
    }

    /// A wrapper's body: the WASI call, then (but for fd_seek) its
    /// arguments and result to the hook, then the result.
    fn wrapper_body(&self, position: usize) -> wasm_encoder::Function {
        let params = added_types()[4 + position].0.len() as u32;
        let mut f = wasm_encoder::Function::new([(1, ValType::I32)]);
        let result = params;
        for p in 0..params {
            f.instruction(&Instruction::LocalGet(p));
        }
        f.instruction(&Instruction::Call(self.added_import(4 + position)));
        if position < TRACKED.len() {
            f.instruction(&Instruction::LocalSet(result));
            for p in 0..=params {
                f.instruction(&Instruction::LocalGet(p));
            }
            f.instruction(&Instruction::Call(self.added_import(1 + position)));
            f.instruction(&Instruction::LocalGet(result));
        }
        f.instruction(&Instruction::End);
        f
    }
}

impl Reencode for Polls {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error> {
        // The guest's tracked WASI calls go to their wrappers; the added
        // imports come after the module's own.
        if let Some(k) = self
            .shape
            .wasi_imports
            .iter()
            .position(|i| *i == Some(func))
        {
            return Ok(self.wrapper(k));
        }
        Ok(if func >= self.shape.imported_funcs {
            func + ADDED_IMPORTS.len() as u32
        } else {
            func
        })
    }

    fn parse_type_section(
        &mut self,
        types: &mut wasm_encoder::TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), reencode::Error> {
        reencode::utils::parse_type_section(self, types, section)?;
        for (params, results) in added_types() {
            types.ty().function(params, results);
        }
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut wasm_encoder::ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), reencode::Error> {
        reencode::utils::parse_import_section(self, imports, section)?;
        self.imports(imports);
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut wasm_encoder::FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), reencode::Error> {
        reencode::utils::parse_function_section(self, functions, section)?;
        for j in 0..WRAPPERS.len() {
            functions.function(self.first_type + 4 + j as u32);
        }
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), reencode::Error> {
        reencode::utils::parse_code_section(self, code, section)?;
        for j in 0..WRAPPERS.len() {
            code.function(&self.wrapper_body(j));
        }
        Ok(())
    }

    fn parse_global_section(
        &mut self,
        globals: &mut wasm_encoder::GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<(), reencode::Error> {
        reencode::utils::parse_global_section(self, globals, section)?;
        self.flag_global(globals);
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut wasm_encoder::ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), reencode::Error> {
        reencode::utils::parse_export_section(self, exports, section)?;
        self.exports(exports);
        Ok(())
    }

    /// The sections a module may lack, made where they belong.
    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<wasm_encoder::SectionId>,
        before: Option<wasm_encoder::SectionId>,
    ) -> Result<(), reencode::Error> {
        use wasm_encoder::SectionId as S;
        let rank = |s: Option<S>| match s {
            None => u8::MAX,
            Some(S::Type) => 1,
            Some(S::Import) => 2,
            Some(S::Function | S::Table | S::Memory | S::Tag) => 3,
            Some(S::Global) => 4,
            Some(S::Export) => 5,
            Some(_) => 6,
        };
        if !self.shape.has_imports && !self.added_imports && rank(before) > 2 {
            let mut imports = wasm_encoder::ImportSection::new();
            self.imports(&mut imports);
            module.section(&imports);
        }
        if !self.shape.has_globals && !self.added_global && rank(before) > 4 {
            let mut globals = wasm_encoder::GlobalSection::new();
            self.flag_global(&mut globals);
            module.section(&globals);
        }
        if !self.shape.has_exports && !self.added_exports && rank(before) > 5 {
            let mut exports = wasm_encoder::ExportSection::new();
            self.exports(&mut exports);
            module.section(&exports);
        }
        Ok(())
    }

    fn parse_function_body(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        body: wasmparser::FunctionBody<'_>,
    ) -> Result<(), reencode::Error> {
        let mut f = reencode::utils::new_function_with_parsed_locals(self, &body)?;
        let mut ops = body.get_operators_reader()?;
        let poll = self.added_import(0);
        while !ops.eof() {
            let op = ops.read()?;
            let is_loop = matches!(op, Operator::Loop { .. });
            f.instruction(&self.instruction(op)?);
            if is_loop {
                f.instruction(&Instruction::GlobalGet(self.flag));
                f.instruction(&Instruction::If(wasm_encoder::BlockType::Empty));
                f.instruction(&Instruction::Call(poll));
                f.instruction(&Instruction::End);
            }
        }
        code.function(&f);
        Ok(())
    }
}

/// Step 1 alone (tested on its own; [`instrument`] runs both).
pub(crate) fn add_polls(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let shape = shape(bytes)?;
    if shape.defined_funcs == 0 {
        return Err("it defines no function".into());
    }
    let mut polls = Polls {
        first_type: shape.types,
        flag: shape.imported_globals + shape.defined_globals,
        shape,
        added_imports: false,
        added_global: false,
        added_exports: false,
    };
    let mut module = wasm_encoder::Module::new();
    polls
        .parse_core_module(&mut module, Parser::new(0), bytes)
        .map_err(|e| e.to_string())?;
    Ok(module.finish())
}

/// Step 3: every read of the flag global (found by its export) becomes an
/// atomic load of byte 0 of an added shared memory, exported under the
/// flag's name instead. The module has exactly one memory (step 1 saw to
/// it), so the flag's is memory 1.
pub(crate) fn flag_in_memory(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut flag_global = None;
    let mut has_memory_section = false;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| e.to_string())? {
            Payload::MemorySection(_) => has_memory_section = true,
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e.map_err(|e| e.to_string())?;
                    if e.name == FLAG_EXPORT && e.kind == wasmparser::ExternalKind::Global {
                        flag_global = Some(e.index);
                    }
                }
            }
            _ => {}
        }
    }
    let flag_global = flag_global.ok_or_else(|| format!("the module exports no {FLAG_EXPORT}"))?;
    let mut pass = FlagMemory {
        flag_global,
        has_memory_section,
        added_memory: false,
    };
    let mut module = wasm_encoder::Module::new();
    pass.parse_core_module(&mut module, Parser::new(0), bytes)
        .map_err(|e| e.to_string())?;
    Ok(module.finish())
}

const FLAG_MEMORY: u32 = 1;

struct FlagMemory {
    flag_global: u32,
    has_memory_section: bool,
    added_memory: bool,
}

impl FlagMemory {
    fn add_memory(&mut self, memories: &mut wasm_encoder::MemorySection) {
        memories.memory(wasm_encoder::MemoryType {
            minimum: 1,
            maximum: Some(1),
            memory64: false,
            shared: true,
            page_size_log2: None,
        });
        self.added_memory = true;
    }
}

impl Reencode for FlagMemory {
    type Error = std::convert::Infallible;

    fn parse_memory_section(
        &mut self,
        memories: &mut wasm_encoder::MemorySection,
        section: wasmparser::MemorySectionReader<'_>,
    ) -> Result<(), reencode::Error> {
        reencode::utils::parse_memory_section(self, memories, section)?;
        self.add_memory(memories);
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut wasm_encoder::ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), reencode::Error> {
        for export in section {
            let export = export?;
            if export.name == FLAG_EXPORT {
                exports.export(FLAG_EXPORT, ExportKind::Memory, FLAG_MEMORY);
            } else {
                let index = self.external_index(export.kind, export.index)?;
                exports.export(export.name, self.export_kind(export.kind)?, index);
            }
        }
        Ok(())
    }

    /// A module whose one memory is imported has no memory section: one is
    /// made where it belongs.
    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<wasm_encoder::SectionId>,
        before: Option<wasm_encoder::SectionId>,
    ) -> Result<(), reencode::Error> {
        use wasm_encoder::SectionId as S;
        let after_memories = !matches!(
            before,
            Some(S::Custom | S::Type | S::Import | S::Function | S::Table | S::Memory)
        );
        if !self.has_memory_section && !self.added_memory && after_memories {
            let mut memories = wasm_encoder::MemorySection::new();
            self.add_memory(&mut memories);
            module.section(&memories);
        }
        Ok(())
    }

    fn parse_function_body(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        body: wasmparser::FunctionBody<'_>,
    ) -> Result<(), reencode::Error> {
        let mut f = reencode::utils::new_function_with_parsed_locals(self, &body)?;
        let mut ops = body.get_operators_reader()?;
        while !ops.eof() {
            match ops.read()? {
                Operator::GlobalGet { global_index } if global_index == self.flag_global => {
                    f.instruction(&Instruction::I32Const(0));
                    f.instruction(&Instruction::I32AtomicLoad8U(wasm_encoder::MemArg {
                        offset: 0,
                        align: 0,
                        memory_index: FLAG_MEMORY,
                    }));
                }
                op => {
                    f.instruction(&self.instruction(op)?);
                }
            }
        }
        code.function(&f);
        Ok(())
    }
}

/// Binaryen's tool, found on PATH.
const WASM_OPT: &str = "wasm-opt";

/// The three steps: the module's checkpointable form.
pub fn instrument(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let polled = add_polls(bytes)?;
    let (module, name) = POLL_IMPORT;
    let dir = tempdir()?;
    let input = dir.join("in.wasm");
    let output = dir.join("out.wasm");
    let result = (|| {
        std::fs::File::create(&input)
            .and_then(|mut f| f.write_all(&polled))
            .map_err(|e| format!("write {}: {e}", input.display()))?;
        // -all: the module's own features, whatever its producer used;
        // -O2 after Asyncify, which Binaryen's authors advise (it removes
        // most of the instrumentation's cost on code that cannot unwind).
        let out = Command::new(WASM_OPT)
            .arg(&input)
            .args(["-all", "--asyncify"])
            .arg(format!("--pass-arg=asyncify-imports@{module}.{name}"))
            .args(["-O2", "-o"])
            .arg(&output)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                format!(
                    "run {WASM_OPT} (Binaryen, Debian's binaryen package): {e}; it instruments \
                     modules for checkpoints"
                )
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last: Vec<&str> = stderr.lines().rev().take(3).collect();
            return Err(format!(
                "{WASM_OPT} --asyncify failed ({}): {}",
                out.status,
                last.into_iter().rev().collect::<Vec<_>>().join(" / ")
            ));
        }
        std::fs::read(&output).map_err(|e| format!("read {}: {e}", output.display()))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    flag_in_memory(&result?)
}

/// The version of the instrumenting tool, part of the compiled module's
/// cache key and of every image (a rewind needs the same instrumentation).
pub fn tool_version() -> Result<String, String> {
    let out = Command::new(WASM_OPT)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "run {WASM_OPT} --version: {e}; checkpoints need Binaryen (apt install binaryen)"
            )
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn tempdir() -> Result<std::path::PathBuf, String> {
    let base = std::env::temp_dir();
    for n in 0..100u32 {
        let dir = base.join(format!("amphi-instrument-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("mkdir {}: {e}", dir.display())),
        }
    }
    Err(format!("no free directory in {}", base.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Indices, not names: the printer would show a name for a function
    // the name section (remapped too) names.
    const LOOP: &str = r#"(module
        (global (mut i32) (i32.const 1024))
        (memory 1)
        (func (param i32) (result i32)
            (loop (br_if 0 (i32.eqz (local.get 0))))
            (call 1))
        (func (result i32) (i32.const 7))
        (export "f" (func 0)))"#;

    #[test]
    fn every_loop_polls_and_calls_keep_their_targets() {
        let out = add_polls(&wat::parse_str(LOOP).unwrap()).unwrap();
        wasmparser::Validator::new().validate_all(&out).unwrap();
        let text = wasmprinter::print_bytes(&out).unwrap();
        assert!(text.contains("(import \"amphi\" \"poll\""), "{text}");
        assert!(text.contains("global.get 1"), "{text}");
        // $g was function 1 and is 9 after the 8 added imports.
        assert!(text.contains("call 9"), "{text}");
        assert!(
            text.contains(&format!("(export \"{GLOBAL_EXPORT_PREFIX}0\" (global 0))")),
            "{text}"
        );
        assert!(
            text.contains(&format!("(export \"{FLAG_EXPORT}\" (global 1))")),
            "{text}"
        );
    }

    #[test]
    fn the_flag_moves_to_a_shared_memory_the_back_edges_load_atomically() {
        let imported = r#"(module
            (import "env" "memory" (memory 1))
            (func (export "f") (loop (br 0))))"#;
        for wat in [LOOP, imported] {
            let polled = add_polls(&wat::parse_str(wat).unwrap()).unwrap();
            let out = flag_in_memory(&polled).unwrap();
            wasmparser::Validator::new().validate_all(&out).unwrap();
            let text = wasmprinter::print_bytes(&out).unwrap();
            assert!(text.contains("i32.atomic.load8_u 1"), "{text}");
            assert!(!text.contains("global.get"), "{text}");
            assert!(text.contains("(memory (;1;) 1 1 shared)"), "{text}");
            assert!(
                text.contains(&format!("(export \"{FLAG_EXPORT}\" (memory 1))")),
                "{text}"
            );
        }
    }

    #[test]
    fn the_guests_file_calls_go_through_reporting_wrappers() {
        let wat = r#"(module
            (import "wasi_snapshot_preview1" "fd_close" (func (param i32) (result i32)))
            (memory 1)
            (func (export "_start") (drop (call 0 (i32.const 3)))))"#;
        let out = add_polls(&wat::parse_str(wat).unwrap()).unwrap();
        wasmparser::Validator::new().validate_all(&out).unwrap();
        let text = wasmprinter::print_bytes(&out).unwrap();
        // Imports: fd_close 0, then the 8 added (the hook "closed" is 3,
        // fd_close again 6);
        // _start is 9, the wrappers 10 to 13 (fd_close's is 11).
        assert!(text.contains("call 11"), "{text}");
        let wrapper = text.split("(func (;11;)").nth(1).unwrap();
        let body = &wrapper[..wrapper.find("(func").unwrap_or(wrapper.len())];
        assert!(body.contains("call 6") && body.contains("call 3"), "{body}");
        assert!(
            text.contains(&format!(
                "(export \"{WASI_EXPORT_PREFIX}fd_close\" (func 11))"
            )),
            "{text}"
        );
    }

    #[test]
    fn what_an_image_cannot_carry_is_refused_by_name() {
        for (wat, expect) in [
            ("(module (memory 1) (memory 1))", "2 memories"),
            ("(module (memory i64 1))", "64-bit"),
            ("(module (memory 1 1 shared))", "shared"),
            (
                "(module (memory 1) (table 1 funcref) (func (table.set 0 (i32.const 0) (ref.null func))))",
                "table.set",
            ),
            (
                "(module (import \"a\" \"g\" (global (mut i32))) (memory 1))",
                "mutable global a.g",
            ),
            ("(component)", "component"),
        ] {
            let e = add_polls(&wat::parse_str(wat).unwrap()).unwrap_err();
            assert!(e.contains(expect), "{wat}: {e}");
        }
    }
}
