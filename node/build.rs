//! Embeds the web UI: every file under `src/ui/static` and `src/ui/vendor`
//! becomes an entry of the table `ui::assets` serves, so the binary needs
//! no files beside it and the UI needs no JavaScript build at install.

use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("src/ui");
    let mut entries = Vec::new();
    for (dir, prefix) in [("static", ""), ("vendor", "vendor/")] {
        let base = root.join(dir);
        println!("cargo:rerun-if-changed={}", base.display());
        let mut files = Vec::new();
        walk(&base, &mut files);
        files.sort();
        for file in files {
            let rel = file.strip_prefix(&base).unwrap().to_string_lossy().replace('\\', "/");
            entries.push(format!(
                "    ({:?}, include_bytes!({:?})),\n",
                format!("{prefix}{rel}"),
                file.display().to_string()
            ));
        }
    }
    let table = format!("pub static FILES: &[(&str, &[u8])] = &[\n{}];\n", entries.concat());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("ui_assets.rs");
    std::fs::write(out, table).unwrap();
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        // Editors' leftovers and hidden files are not the UI's.
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}
