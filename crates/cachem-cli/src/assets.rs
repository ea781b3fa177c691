//! `cachem generate-assets --out DIR` (hidden): writes the man pages
//! (`DIR/man/cachem.1`, `DIR/man/cachem-<command>.1`) and the shell
//! completions (`DIR/completions/cachem.bash`, `_cachem`, `cachem.fish`)
//! from the very command definition this binary parses with, so they cannot
//! drift from it. `make assets` and `make deb` run it on the freshly built
//! binary; see docs/operations.md for why this is not a build script.

use crate::CliResult;
use clap_complete::Shell;
use std::path::Path;

pub fn generate(cmd: clap::Command, out: &Path) -> CliResult {
    let man = out.join("man");
    let comp = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&comp)?;
    let cmd = cmd.disable_help_subcommand(true);
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let visible = without_hidden_commands(&cmd);
    for (shell, file) in [(Shell::Bash, "cachem.bash"), (Shell::Zsh, "_cachem"), (Shell::Fish, "cachem.fish")]
    {
        let mut f = std::fs::File::create(comp.join(file))?;
        clap_complete::generate(shell, &mut visible.clone(), "cachem", &mut f);
    }
    Ok(())
}

/// The command without its hidden subcommands: clap_complete offers hidden
/// subcommands (clap_mangen does not), and `demo-worker` or
/// `generate-assets` are no business of an operator's Tab key.
fn without_hidden_commands(cmd: &clap::Command) -> clap::Command {
    let mut c = clap::Command::new("cachem").version(env!("CARGO_PKG_VERSION")).disable_help_subcommand(true);
    if let Some(a) = cmd.get_about() {
        c = c.about(a.clone());
    }
    c.args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}
