//! The `status` and `connections` screens, in the shape Workerman users know: a titled rule per
//! section and whitespace-aligned columns under a header row, one word per cell (`-` when
//! empty), so `awk` and the tests can read them. `--json` gives scripts the same data
//! without this module.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::process::control::protocol::{Connection, Status};

/// Width of the section rules.
const RULE: usize = 80;

/// The `status` screen.
pub fn status(label: &str, s: &Status) -> String {
    let mut out = String::new();
    rule(&mut out, "WASMGATE STATUS");
    let started = UNIX_EPOCH + Duration::from_secs(s.started_at);
    let uptime = SystemTime::now()
        .duration_since(started)
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{label}  wasmgate/{}  pid {}  started {}  up {}",
        s.version,
        s.pid,
        timestamp(s.started_at),
        duration(uptime)
    );

    rule(&mut out, "ROLES");
    let mut roles = Table::new(&[
        "role",
        "name",
        "listen",
        "app",
        "connections",
        "groups",
        "uids",
        "links",
        "serving",
    ]);
    if let Some(register) = &s.register {
        roles.row([
            "register", "register", register, "-", "-", "-", "-", "-", "-",
        ]);
    }
    for g in &s.gateways {
        roles.row([
            "gateway",
            &g.name,
            &g.listen,
            &g.app,
            &g.connections.to_string(),
            &g.groups.to_string(),
            &g.uids.to_string(),
            &g.worker_links.to_string(),
            // Of the linked worker hosts, those that serve the gateway's app.
            &g.serving_links.to_string(),
        ]);
    }
    if let Some(w) = &s.worker {
        let links = w.gateway_links.to_string();
        roles.row([
            "worker", &w.name, &w.plugins, "-", "-", "-", "-", &links, "-",
        ]);
    }
    for (name, url) in &s.endpoints {
        roles.row([name.as_str(), name, url, "-", "-", "-", "-", "-", "-"]);
    }
    roles.render(&mut out);
    register_outages(&mut out, s);
    nats(&mut out, s);

    rule(&mut out, "PLUGINS");
    if s.plugins.is_empty() {
        out.push_str("none loaded\n");
    } else {
        let mut plugins = Table::new(&["worker", "plugin", "version", "instances", "loaded_at"]);
        for p in &s.plugins {
            plugins.row([
                &p.worker,
                &p.plugin,
                &p.version,
                &p.instances.to_string(),
                &timestamp(p.loaded_at),
            ]);
        }
        plugins.render(&mut out);
    }
    if !s.refused.is_empty() {
        rule(&mut out, "REFUSED PLUGIN VERSIONS");
        let mut refused = Table::new(&["worker", "plugin", "version", "refused_at", "reason"]);
        for r in &s.refused {
            refused.row([
                &r.worker,
                &r.plugin,
                r.version.as_deref().unwrap_or_default(),
                &timestamp(r.refused_at),
                &r.reason,
            ]);
        }
        refused.render(&mut out);
    }
    if let Some(w) = &s.worker {
        rule(&mut out, "PLUGIN MEMORY");
        let worst = bytesize::ByteSize::b(w.plugin_memory_worst_case);
        let _ = writeln!(
            out,
            "worst case {} (memory_limit x instances x apps x 2 during a reload)",
            worst.display().iec()
        );
        if !w.data.is_empty() {
            rule(
                &mut out,
                "DATA (shared no: a file of this worker host only)",
            );
            let mut data = Table::new(&["app", "interface", "name", "backend", "shared", "file"]);
            for d in &w.data {
                data.row([
                    &d.app,
                    &d.interface,
                    &d.name,
                    &d.backend,
                    if d.file.is_some() { "no" } else { "yes" },
                    d.file.as_deref().unwrap_or("-"),
                ]);
            }
            data.render(&mut out);
        }
    }

    if let Some(cluster) = &s.cluster {
        rule(&mut out, "CLUSTER GATEWAYS (as they answered)");
        let mut gateways =
            Table::new(&["internal", "apps", "connections", "groups", "uids", "links"]);
        for g in &cluster.gateways {
            // A listener as `app:port`, the port its clients connect to.
            let listeners: Vec<String> = g
                .listeners
                .iter()
                .map(|l| format!("{}:{}", l.app, l.port))
                .collect();
            let listeners = if listeners.is_empty() {
                "-".to_owned()
            } else {
                listeners.join(",")
            };
            gateways.row([
                &g.address.to_string(),
                &listeners,
                &g.clients.to_string(),
                &g.groups.to_string(),
                &g.uids.to_string(),
                &g.worker_links.to_string(),
            ]);
        }
        if cluster.gateways.len() > 1 {
            // Groups and uids may span gateways: only connections add up.
            let clients: u64 = cluster.gateways.iter().map(|g| u64::from(g.clients)).sum();
            gateways.row(["total", "-", &clients.to_string(), "-", "-", "-"]);
        }
        gateways.render(&mut out);
        rule(&mut out, "CLUSTER WORKER HOSTS (as they reported)");
        let mut workers = Table::new(&["worker", "plugin", "version", "instances", "faults"]);
        for w in &cluster.workers {
            for p in &w.plugins {
                let f = &p.faults;
                workers.row([
                    &w.name,
                    &p.plugin,
                    &p.version,
                    &p.instances.to_string(),
                    &(f.trap + f.timeout + f.memory_limit).to_string(),
                ]);
            }
        }
        workers.render(&mut out);
    }

    rule(&mut out, "TRAFFIC");
    let t = &s.traffic;
    let mut traffic = Table::new(&[
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "events",
        "in/s",
        "out/s",
        "events/s",
    ]);
    traffic.row([
        &t.messages_in.to_string(),
        &t.messages_out.to_string(),
        &t.bytes_in.to_string(),
        &t.bytes_out.to_string(),
        &t.events.to_string(),
        &format!("{:.1}", t.messages_in_per_sec),
        &format!("{:.1}", t.messages_out_per_sec),
        &format!("{:.1}", t.events_per_sec),
    ]);
    traffic.render(&mut out);
    rule(&mut out, "");
    out
}

/// The registers each role cannot reach, if any: a role that reaches none of them cannot
/// find (or be found by) members that start or move.
fn register_outages(out: &mut String, s: &Status) {
    let gateways = s
        .gateways
        .iter()
        .map(|g| ("gateway", &g.name, &g.registers));
    let worker = s.worker.iter().map(|w| ("worker", &w.name, &w.registers));
    let mut table = Table::new(&[
        "role",
        "name",
        "register",
        "unreachable_for",
        "none_reachable",
    ]);
    let mut any = false;
    for (role, name, reach) in gateways.chain(worker) {
        for u in &reach.unreachable {
            any = true;
            let cut_off = match reach.none_reachable_secs {
                Some(secs) => format!("yes_for_{secs}s"),
                None => "no".to_owned(),
            };
            table.row([role, name, &u.register, &format!("{}s", u.secs), &cut_off]);
        }
    }
    if any {
        rule(out, "REGISTERS UNREACHABLE");
        table.render(out);
    }
}

/// The NATS connection, with `[cluster] nats`: whether commands can flow now, and what each
/// gateway holds on it.
fn nats(out: &mut String, s: &Status) {
    let Some(n) = &s.nats else {
        return;
    };
    rule(out, "NATS");
    let held_for = SystemTime::now()
        .duration_since(UNIX_EPOCH + Duration::from_secs(n.since))
        .unwrap_or_default();
    let mut table = Table::new(&[
        "state",
        "since",
        "for",
        "server",
        "connects",
        "published",
        "servers",
    ]);
    table.row([
        &n.state,
        &timestamp(n.since),
        &format!("{}s", held_for.as_secs()),
        n.server.as_deref().unwrap_or("-"),
        &n.connects.to_string(),
        &n.commands_published.to_string(),
        &n.servers.join(","),
    ]);
    table.render(out);
    if !n.gateways.is_empty() {
        let mut gateways = Table::new(&["gateway", "group_subjects", "uid_subjects", "received"]);
        for g in &n.gateways {
            gateways.row([
                &g.name,
                &g.group_subjects.to_string(),
                &g.uid_subjects.to_string(),
                &g.commands_received.to_string(),
            ]);
        }
        gateways.render(out);
    }
}

/// The `connections` screen.
pub fn connections(clients: &[Connection]) -> String {
    let mut out = String::new();
    rule(
        &mut out,
        &format!("WASMGATE CONNECTIONS ({})", clients.len()),
    );
    let mut table = Table::new(&["client_id", "gateway", "remote", "uid", "groups"]);
    for c in clients {
        let groups = c.groups.join(",");
        table.row([
            &c.client_id,
            &c.gateway,
            &c.remote,
            c.uid.as_deref().unwrap_or(""),
            &groups,
        ]);
    }
    table.render(&mut out);
    rule(&mut out, "");
    out
}

fn rule(out: &mut String, title: &str) {
    let title = if title.is_empty() {
        String::new()
    } else {
        format!(" {title} ")
    };
    let _ = writeln!(out, "{title:-^RULE$}");
}

fn timestamp(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_seconds)).to_string()
}

fn duration(d: Duration) -> String {
    let s = d.as_secs();
    format!(
        "{}d {}h {}m {}s",
        s / 86_400,
        s / 3_600 % 24,
        s / 60 % 60,
        s % 60
    )
}

/// Columns padded to their widest cell, two spaces apart.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row; an empty cell shows as `-` and whitespace inside a cell as `_`, so every
    /// cell stays one word.
    fn row<const N: usize>(&mut self, cells: [&str; N]) {
        debug_assert_eq!(N, self.rows[0].len(), "a row has a cell per column");
        self.rows.push(
            cells
                .iter()
                .map(|c| match c.trim() {
                    "" => "-".to_owned(),
                    c => c.replace(char::is_whitespace, "_"),
                })
                .collect(),
        );
    }

    fn render(&self, out: &mut String) {
        let columns = self.rows[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                let _ = write!(line, "{cell:width$}  ");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_single_words_in_aligned_columns() {
        let mut table = Table::new(&["a", "name"]);
        table.row(["long value", ""]);
        table.row(["x", "y"]);
        let mut out = String::new();
        table.render(&mut out);
        assert_eq!(out, "a           name\nlong_value  -\nx           y\n");
    }

    #[test]
    fn durations_read_like_an_uptime() {
        assert_eq!(duration(Duration::from_secs(90_061)), "1d 1h 1m 1s");
    }
}
