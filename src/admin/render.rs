//! The text `certgate admin` prints for a successful answer (`--json` prints the JSON
//! itself). Answers are read into the typed bodies of [`super::api`]; a field an older or
//! newer server leaves out prints as `-`, so rendering never fails.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::api::{AccountChange, AccountStatus, CertificateStatus, Connections, Revoked};
use super::client::AdminCommand;

/// Human-readable text of a successful answer to `cmd` (ends with a newline).
pub fn render(cmd: &AdminCommand, v: &Value) -> String {
    match cmd {
        AdminCommand::Enable { .. } | AdminCommand::Reset { .. } | AdminCommand::Ticket { .. } => {
            account_change(cmd, &read(v))
        }
        AdminCommand::Revoke { .. } => revoked(&read(v)),
        AdminCommand::Status { .. } => status(&read(v)),
        AdminCommand::CertificateStatus { .. } => certificate(&read(v)),
        AdminCommand::Connections { .. } | AdminCommand::CloseConnections { .. } => {
            connections(&read(v))
        }
    }
}

fn connections(v: &Connections) -> String {
    let mut out = match v.closed {
        Some(n) => format!(
            "Closed {n} open connection(s) of account {} on {}.\n",
            dash(&v.account),
            dash(&v.instance)
        ),
        None => format!(
            "Open connections of account {} on {}: {}\n",
            dash(&v.account),
            dash(&v.instance),
            v.connections.len()
        ),
    };
    if !v.connections.is_empty() {
        out.push_str(&format!(
            "\n{:<40} {:<34} {:<9} {:<21} {}\n",
            "peer", "serial", "protocol", "opened at", "requests"
        ));
        for c in &v.connections {
            out.push_str(&format!(
                "{:<40} {:<34} {:<9} {:<21} {}\n",
                dash(&c.peer),
                dash(&c.serial),
                dash(&c.protocol),
                dash(&c.opened_at),
                c.requests
            ));
        }
    }
    if v.closed.is_none() {
        out.push_str(
            "\nEach instance lists only its own connections; ask every instance's admin API.\n",
        );
    }
    out
}

fn read<T: DeserializeOwned + Default>(v: &Value) -> T {
    T::deserialize(v).unwrap_or_default()
}

/// `-` for what the server did not say.
fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().map_or("-", dash)
}

fn account_change(cmd: &AdminCommand, v: &AccountChange) -> String {
    let account = dash(&v.account.account);
    let generation = v.account.generation;
    let mut out = match cmd {
        AdminCommand::Enable { .. } => {
            format!("Two-factor enabled for account {account} (generation {generation}).\n")
        }
        AdminCommand::Reset { .. } => format!(
            "Account {account} reset: now generation {generation}; its older certificates are \
             refused from now on.\n"
        ),
        _ => format!("New enrollment ticket for account {account} (generation {generation}).\n"),
    };
    if let Some(link) = &v.enroll_url {
        out.push_str(&format!(
            "\nEnrollment link (single use, expires {}):\n\n    {link}\n\n\
             Give it to the user over a trusted channel; it is not shown again.\n",
            opt(&v.ticket_expires_at)
        ));
    }
    if let Some(note) = &v.note {
        out.push_str(&format!("\nNote: {note}\n"));
    }
    out
}

fn revoked(v: &Revoked) -> String {
    let mut out = format!(
        "Certificate {} revoked (reason {}, since {}).\n",
        dash(&v.serial),
        dash(&v.reason),
        dash(&v.revoked_at)
    );
    if let Some(account) = &v.account {
        out.push_str(&format!("It belongs to account {account}.\n"));
    }
    out
}

fn status(v: &AccountStatus) -> String {
    let a = &v.account;
    let mut out = String::new();
    out.push_str(&format!("account     {}\n", dash(&a.account)));
    out.push_str(&format!("generation  {}\n", a.generation));
    let two_factor = if a.two_factor { "enabled" } else { "disabled" };
    out.push_str(&format!("two-factor  {two_factor}\n"));
    out.push_str(&format!("created     {}\n", dash(&a.created_at)));
    let reset = a.reset_at.as_deref().unwrap_or("never");
    out.push_str(&format!("last reset  {reset}\n\n"));

    if v.certificates.is_empty() {
        out.push_str("No certificates on record.\n");
        return out;
    }
    let rows: Vec<[String; 4]> = v
        .certificates
        .iter()
        .map(|c| {
            let state = if c.revoked {
                "revoked"
            } else if c.generation < a.generation {
                "refused (older generation)"
            } else {
                "valid"
            };
            [
                dash(&c.serial).to_string(),
                c.generation.to_string(),
                dash(&c.not_after).to_string(),
                state.to_string(),
            ]
        })
        .collect();
    let header = ["SERIAL", "GEN", "NOT AFTER", "STATUS"];
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 4]| {
        format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}\n",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        )
    };
    out.push_str(&line(header));
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3]]));
    }
    out
}

fn certificate(v: &CertificateStatus) -> String {
    let mut out = String::new();
    out.push_str(&format!("serial       {}\n", dash(&v.serial)));
    out.push_str(&format!(
        "account      {}\n",
        v.account
            .as_deref()
            .unwrap_or("(not in the certificate registry)")
    ));
    let generation = v.generation.map_or("-".to_string(), |g| g.to_string());
    out.push_str(&format!("generation   {generation}\n"));
    out.push_str(&format!("fingerprint  {}\n", opt(&v.fingerprint)));
    out.push_str(&format!("issued       {}\n", opt(&v.issued_at)));
    out.push_str(&format!("not after    {}\n", opt(&v.not_after)));
    if v.revoked {
        out.push_str(&format!(
            "revoked      yes ({}, since {})\n",
            opt(&v.reason),
            opt(&v.revoked_at)
        ));
    } else {
        out.push_str("revoked      no\n");
    }
    out
}
