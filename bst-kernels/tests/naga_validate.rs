//! Parses and validates every `shaders/*.wgsl` with naga (no GPU needed), so a shader
//! error fails here with a readable report, on any machine.
//!
//! Capabilities: none beyond the WebGPU core yet. A kernel that starts using, say,
//! subgroup operations must add the capability here and the feature in `GpuContext::new`.

use std::path::PathBuf;

use naga::valid::{Capabilities, ValidationFlags, Validator};

/// Invocations per workgroup every device grants (WebGPU's default limit).
const MAX_INVOCATIONS: u32 = 256;

#[test]
fn every_shader_parses_and_validates() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shaders");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no .wgsl files in {}", dir.display());

    let mut failures = Vec::new();
    for path in &paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let source = std::fs::read_to_string(path).expect("read shader");
        let module = match naga::front::wgsl::parse_str(&source) {
            Ok(m) => m,
            Err(e) => {
                failures.push(e.emit_to_string_with_path(&source, &name));
                continue;
            }
        };
        let mut validator = Validator::new(ValidationFlags::all(), Capabilities::empty());
        if let Err(e) = validator.validate(&module) {
            failures.push(e.emit_to_string_with_path(&source, &name));
            continue;
        }
        for ep in &module.entry_points {
            let [x, y, z] = ep.workgroup_size;
            let n = x * y * z;
            if n > MAX_INVOCATIONS {
                failures.push(format!(
                    "{name}: entry point {} has {n} invocations per workgroup, over {MAX_INVOCATIONS}",
                    ep.name
                ));
            }
        }
        println!("{name}: ok ({} entry points)", module.entry_points.len());
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
