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

/// The library's hints name its builder methods (`digest_auth`, `tls_ca_pem`, ...); a CLI
/// user needs the flags instead.
pub fn in_cli_terms(msg: &str) -> String {
    const WORDS: [(&str, &str); 10] = [
        ("tls_identity_pem(cert, key)", "--etcd-cert and --etcd-key"),
        (
            "digest_auth or sasl_digest_md5",
            "--zk-digest-file (or SUCCESSION_ZK_DIGEST) or --zk-sasl-user with its password",
        ),
        (
            "NodeAcl::CreatorAllOthersRead (the default with credentials) and CreatorAll need",
            "the ACL of nodes created with credentials needs",
        ),
        (", or use NodeAcl::Open", ""),
        ("for sasl_digest_md5 the server", "for SASL the server"),
        ("sasl_digest_md5", "--zk-sasl-user"),
        ("digest_auth", "--zk-digest-file"),
        ("tls_identity_pem", "--etcd-cert/--etcd-key"),
        ("tls_ca_pem", "--etcd-ca"),
        ("tls_domain_name", "--etcd-server-name"),
    ];
    let mut out = msg.to_string();
    for (lib, cli) in WORDS {
        out = out.replace(lib, cli);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{in_cli_terms, one_line};

    #[test]
    fn library_hints_name_the_flags() {
        assert_eq!(
            in_cli_terms("ZooKeeper rejected the credentials; fix digest_auth or sasl_digest_md5 (user, password)"),
            "ZooKeeper rejected the credentials; fix --zk-digest-file (or SUCCESSION_ZK_DIGEST) or --zk-sasl-user with its password (user, password)"
        );
        assert_eq!(
            in_cli_terms("check the certificates (tls_ca_pem, tls_identity_pem)"),
            "check the certificates (--etcd-ca, --etcd-cert/--etcd-key)"
        );
    }

    #[test]
    fn clap_errors_fold_into_one_line_without_usage() {
        let text = "error: unexpected argument '--zk-digst' found\n\n  tip: a similar argument exists: '--zk-digest-file'\n\nUsage: succession campaign --zk-digest-file <FILE>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(text),
            "unexpected argument '--zk-digst' found (a similar argument exists: '--zk-digest-file'); see succession --help"
        );
    }
}
