//! `succession completions bash|zsh|fish` and `succession man`, generated from the clap
//! definition (so they never drift from the flags).

use std::process::ExitCode;

use clap::CommandFactory;

use crate::args::{Cli, Shell};

/// Print the completion script for `shell` on stdout.
pub fn completions(shell: Shell) -> Result<ExitCode, String> {
    let mut cmd = Cli::command();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut buf: Vec<u8> = Vec::new();
    clap_complete::generate(shell, &mut cmd, "succession", &mut buf);
    write_stdout(&buf);
    Ok(ExitCode::SUCCESS)
}

/// Print the man page (roff) on stdout: the top-level page followed by one section per
/// subcommand with its flags.
pub fn man() -> Result<ExitCode, String> {
    let cmd = Cli::command();
    let mut buf: Vec<u8> = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut buf)
        .map_err(|e| format!("cannot render the man page: {e}"))?;
    for sub in cmd.get_subcommands() {
        if matches!(sub.get_name(), "help" | "man" | "completions") {
            continue;
        }
        buf.extend_from_slice(
            format!(".SH \"SUCCESSION {}\"\n", sub.get_name().to_uppercase()).as_bytes(),
        );
        let man = clap_mangen::Man::new(sub.clone());
        man.render_description_section(&mut buf)
            .and_then(|_| man.render_options_section(&mut buf))
            .map_err(|e| format!("cannot render the man page: {e}"))?;
    }
    write_stdout(&buf);
    Ok(ExitCode::SUCCESS)
}

/// Write to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(buf: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(buf);
    let _ = out.flush();
}
