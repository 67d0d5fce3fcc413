//! The README's "Choosing an algorithm" section shows real `lb-sync simulate` outputs: each
//! `console` block there is a command (`$ lb-sync simulate ...`) and what it prints. This runs
//! every command and compares, so the README cannot drift from the simulator.
//!
//! After a deliberate change of the simulator, `UPDATE_README=1 cargo test --release --test
//! readme_simulate` writes the new outputs into the README (then read them: the prose around
//! them may need to change too).

use std::path::Path;
use std::process::Command;

const SECTION: &str = "## Choosing an algorithm";

/// A command block: where it is in the README, the command's arguments, what the README says
/// it prints.
struct Block {
    start: usize,
    end: usize,
    command: String,
    shown: String,
}

fn blocks(readme: &str) -> Vec<Block> {
    let section = readme.find(SECTION).expect("the README has a 'Choosing an algorithm' section");
    let section_end =
        readme[section + SECTION.len()..].find("\n## ").map_or(readme.len(), |i| section + SECTION.len() + i);
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

fn run(command: &str) -> String {
    let args: Vec<&str> = command.split_whitespace().collect();
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
    let blocks = blocks(&readme);
    assert!(blocks.len() >= 5, "the section shows at least five commands, found {}", blocks.len());
    let update = std::env::var_os("UPDATE_README").is_some();
    let mut updated = readme.clone();
    let mut stale = Vec::new();
    // From the last block back, so the earlier positions stay valid while rewriting.
    for block in blocks.iter().rev() {
        let printed = run(&block.command);
        if printed != block.shown {
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
