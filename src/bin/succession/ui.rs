//! What the user reads on stderr besides events: command-line errors on one line, and
//! whether log lines get colours.

use std::process::ExitCode;

use clap::Parser;

use crate::args::{self, Cli};

/// Parse the command line; on bad input, the one-line error is already printed and the
/// exit code is returned (help and version are printed by clap, which exits).
pub fn parse() -> Result<Cli, ExitCode> {
    if let Err(msg) = args::refuse_plain_secrets(std::env::args_os()) {
        eprintln!("succession: {msg}");
        return Err(ExitCode::from(2));
    }
    Cli::try_parse().map_err(cli_error)
}

/// Colour in log lines: only when stderr is a terminal and NO_COLOR is unset or empty.
pub fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A command-line error from clap as one line on stderr (exit 2); help and version as clap
/// prints them (exit 0).
pub fn cli_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            eprintln!("succession: {}", one_line(&e.render().to_string()));
            ExitCode::from(2)
        }
    }
}

/// clap's multi-line error text (message, tips, usage) folded into one line: the message
/// and its tips, without the usage block.
fn one_line(text: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut in_usage = false;
    for l in text.lines() {
        let t = l.trim();
        if t.is_empty() {
            in_usage = false;
            continue;
        }
        if t.starts_with("Usage:") {
            in_usage = true;
            continue;
        }
        if in_usage || t.starts_with("For more information") {
            continue;
        }
        let t = t.strip_prefix("error: ").unwrap_or(t);
        let t = match t.strip_prefix("tip: ") {
            Some(tip) => format!("({tip})"),
            None => t.to_string(),
        };
        parts.push(t);
    }
    let mut line = parts.join(" ");
    line.push_str("; see succession --help");
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn clap_errors_fold_into_one_line_without_usage() {
        let text = "error: unexpected argument '--zk-digst' found\n\n  tip: a similar argument exists: '--zk-digest-file'\n\nUsage: succession campaign --zk-digest-file <FILE>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(text),
            "unexpected argument '--zk-digst' found (a similar argument exists: '--zk-digest-file'); see succession --help"
        );
    }
}
