//! Parses and validates every `shaders/*.wgsl` with naga (no GPU needed), so a shader
//! error fails here with a readable report, on any machine.
//!
//! Capabilities: the WebGPU core, plus `SHADER_FLOAT16` for a file that says `enable f16;`
//! (`embedding_f16.wgsl`, compiled only on devices with `wgpu::Features::SHADER_F16`). A
//! kernel that starts using, say, subgroup operations must add the capability here and
//! the optional feature where its launcher checks for it.

use std::path::PathBuf;

use naga::valid::{Capabilities, ValidationFlags, Validator};

/// Invocations per workgroup every device grants (WebGPU's default limit).
const MAX_INVOCATIONS: u32 = 256;

#[test]
fn every_shader_parses_and_validates() {
    let shaders = bst_kernels::gpu::shaders();
    // Every file under shaders/ is compiled by a launcher (and so checked here), once.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shaders");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut compiled: Vec<String> = shaders.iter().map(|s| s.file.to_string()).collect();
    compiled.sort();
    assert_eq!(
        files, compiled,
        "the files of shaders/ vs bst_kernels::gpu::shaders()"
    );

    let mut failures = Vec::new();
    for shader in &shaders {
        // Compiled as its launcher compiles it: prelude and interface first.
        let (name, source) = (shader.file, &shader.wgsl);
        let module = match naga::front::wgsl::parse_str(source) {
            Ok(m) => m,
            Err(e) => {
                failures.push(e.emit_to_string_with_path(source, name));
                continue;
            }
        };
        // Only a module that enables f16 gets the capability: the others must compile on
        // every device.
        let caps = if source.lines().any(|l| l.trim() == "enable f16;") {
            Capabilities::SHADER_FLOAT16
        } else {
            Capabilities::empty()
        };
        let mut validator = Validator::new(ValidationFlags::all(), caps);
        if let Err(e) = validator.validate(&module) {
            failures.push(e.emit_to_string_with_path(source, name));
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
