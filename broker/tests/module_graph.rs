//! The broker's top-level modules depend on each other without cycles, so
//! each can be read (and tested) from the bottom up: `core` (the rules)
//! knows nothing of partitions, routers or the cluster; the partition is a
//! shell around it. Checked from the sources: every `crate::<module>` path
//! outside comments and test modules counts as a dependency.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// Top-level module -> the top-level modules its code names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = std::fs::read_dir(src)
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let module = name.strip_suffix(".rs").map(str::to_owned).unwrap_or(name);
            (!matches!(module.as_str(), "lib" | "main")).then_some(module)
        })
        .collect();
    let mut graph = BTreeMap::new();
    for module in &modules {
        let mut deps = BTreeSet::new();
        for file in source_files(&src.join(module), &src.join(format!("{module}.rs"))) {
            let text = std::fs::read_to_string(&file).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
            let code: String =
                code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
            for name in crate_paths(&code) {
                // `crate::events` is a re-export of `core::events`.
                let name = if name == "events" { "core".to_owned() } else { name };
                if modules.contains(&name) && &name != module {
                    deps.insert(name);
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

fn source_files(dir: &Path, file: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = file.exists().then(|| file.to_path_buf()).into_iter().collect();
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(source_files(&path, Path::new("")));
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// Module names after `crate::`: `crate::a::..`, and each top-level name
/// of a `use crate::{a::.., b::{..}, c}` group.
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>();
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start => {
                        names.push(ident(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            names.push(ident(rest));
        }
    }
    names
}

#[test]
fn the_broker_modules_have_no_dependency_cycle() {
    let graph = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(module) = stack.pop() {
            for next in graph.get(&module).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let cycles: Vec<String> = graph
        .iter()
        .flat_map(|(module, deps)| {
            deps.iter().filter(|dep| reach(dep).contains(module)).map(move |dep| format!("{module} -> {dep}"))
        })
        .collect();
    assert!(cycles.is_empty(), "dependency cycles: {cycles:?}\ngraph: {graph:#?}");
    assert!(
        graph["core"].iter().all(|dep| ["config", "error", "storage"].contains(&dep.as_str())),
        "core: {:?}",
        graph["core"]
    );
}
