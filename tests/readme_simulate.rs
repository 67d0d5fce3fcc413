//! The README's "Choosing an algorithm" and "Simulating a split" sections show real `lb-sync
//! simulate` outputs: each `console` block there is a command (`$ lb-sync simulate ...`) and
//! what it prints. This runs every command and compares, so the README cannot drift from the
//! simulator. A command's `lb.json` is the section's first `json` block, written to a file.
//!
//! After a deliberate change of the simulator, `UPDATE_README=1 cargo test --release --test
//! readme_simulate` writes the new outputs into the README (then read them: the prose around
//! them may need to change too).

use std::path::Path;
use std::process::Command;

const SECTIONS: [(&str, usize); 2] = [("## Choosing an algorithm", 5), ("### Simulating a split", 3)];

/// A command block: where it is in the README, the command's arguments, what the README says
/// it prints.
struct Block {
    start: usize,
    end: usize,
    command: String,
    shown: String,
}

/// The section under `heading`: from it to the next heading of its level or above.
fn section(readme: &str, heading: &str) -> (usize, usize) {
    let start = readme.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("the README has '{heading}'")) + 1;
    let level = heading.len() - heading.trim_start_matches('#').len();
    let mut at = start + heading.len();
    while let Some(i) = readme[at..].find("\n#") {
        let line = &readme[at + i + 1..];
        let hashes = line.len() - line.trim_start_matches('#').len();
        if hashes <= level && line[hashes..].starts_with(' ') {
            return (start, at + i);
        }
        at += i + 2;
    }
    (start, readme.len())
}

/// The first `json` block of a section, if any: the `lb.json` its commands read.
fn config_of(readme: &str, (start, end): (usize, usize)) -> Option<&str> {
    let open = readme[start..end].find("```json\n")? + start + "```json\n".len();
    let close = readme[open..].find("```")? + open;
    Some(&readme[open..close])
}

fn blocks(readme: &str, (section, section_end): (usize, usize)) -> Vec<Block> {
    let mut out = Vec::new();
    let mut at = section;
    while let Some(open) = readme[at..section_end].find("```console\n") {
        let body_start = at + open + "```console\n".len();
        let close = readme[body_start..].find("```").expect("every console block is closed") + body_start;
        let body = &readme[body_start..close];
        let (command, shown) = body.split_once('\n').unwrap_or((body, ""));
        let command = command.strip_prefix("$ ").expect("a console block starts with '$ '").to_string();
        out.push(Block { start: body_start, end: close, command, shown: shown.to_string() });
        at = close + 3;
    }
    out
}

fn run(command: &str, config: Option<&Path>) -> String {
    let config = config.map(|c| c.to_str().unwrap());
    let args: Vec<&str> = command
        .split_whitespace()
        .map(|a| if a == "lb.json" { config.expect("a json block for lb.json") } else { a })
        .collect();
    assert_eq!(&args[..2], ["lb-sync", "simulate"], "only lb-sync simulate commands: {command}");
    let output = Command::new(env!("CARGO_BIN_EXE_lb-sync")).args(&args[1..]).output().expect("lb-sync runs");
    assert!(
        output.status.success(),
        "{command}: exit {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[test]
fn readme_simulate_outputs_are_what_the_commands_print() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let config_file = std::env::temp_dir().join(format!("lb-sync-readme-simulate-{}.json", std::process::id()));
    let mut all = Vec::new();
    for (heading, least) in SECTIONS {
        let bounds = section(&readme, heading);
        let found = blocks(&readme, bounds);
        assert!(found.len() >= least, "'{heading}' shows at least {least} commands, found {}", found.len());
        let config = config_of(&readme, bounds).map(|text| {
            std::fs::write(&config_file, text).unwrap();
            config_file.clone()
        });
        all.extend(found.into_iter().map(|block| {
            let printed = run(&block.command, config.as_deref());
            (block, printed)
        }));
    }
    let _ = std::fs::remove_file(&config_file);
    all.sort_by_key(|(block, _)| block.start);
    let update = std::env::var_os("UPDATE_README").is_some();
    let mut updated = readme.clone();
    let mut stale = Vec::new();
    // From the last block back, so the earlier positions stay valid while rewriting.
    for (block, printed) in all.iter().rev() {
        if *printed != block.shown {
            stale.push(format!(
                "$ {}\n--- README shows:\n{}--- the command prints:\n{}",
                block.command, block.shown, printed
            ));
            updated.replace_range(block.start..block.end, &format!("$ {}\n{printed}", block.command));
        }
    }
    if update {
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert!(stale.is_empty(), "README out of date (UPDATE_README=1 rewrites it):\n{}", stale.join("\n"));
}
