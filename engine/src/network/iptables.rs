//! orcad's iptables rules through the `iptables` CLI (iptables 1.8, nft or
//! legacy backend). All rules live in orcad's own chains (prefix `ORCA` by
//! default, `--iptables-chain`), hooked into the built-in chains by one jump
//! each; a clean shutdown removes the jumps and the chains.

use std::process::Command;

use tracing::debug;

use super::NetError;

/// The chain set of one orcad.
#[derive(Debug, Clone)]
pub struct Chains {
    /// nat: DNAT of published ports.
    pub nat: String,
    /// nat: MASQUERADE of networks' outbound traffic.
    pub postrouting: String,
    /// filter: forwarding accepted for orcad's bridges.
    pub forward: String,
    /// filter: isolation between networks (two stages, as dockerd).
    pub iso1: String,
    pub iso2: String,
}

impl Chains {
    pub fn new(prefix: &str) -> Chains {
        Chains {
            nat: prefix.to_string(),
            postrouting: format!("{prefix}-POSTROUTING"),
            forward: format!("{prefix}-FORWARD"),
            iso1: format!("{prefix}-ISOLATION-1"),
            iso2: format!("{prefix}-ISOLATION-2"),
        }
    }

    /// The jumps from built-in chains: (table, chain, rule).
    fn jumps(&self) -> Vec<(&'static str, &'static str, Vec<String>)> {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        vec![
            (
                "nat",
                "PREROUTING",
                v(&["-m", "addrtype", "--dst-type", "LOCAL", "-j", &self.nat]),
            ),
            (
                "nat",
                "OUTPUT",
                v(&[
                    "!",
                    "-d",
                    "127.0.0.0/8",
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                    "-j",
                    &self.nat,
                ]),
            ),
            ("nat", "POSTROUTING", v(&["-j", &self.postrouting])),
            ("filter", "FORWARD", v(&["-j", &self.forward])),
        ]
    }

    fn all(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("nat", self.nat.as_str()),
            ("nat", self.postrouting.as_str()),
            ("filter", self.forward.as_str()),
            ("filter", self.iso1.as_str()),
            ("filter", self.iso2.as_str()),
        ]
    }

    /// Creates (or flushes) the chains and hooks them in. Called at
    /// start-up; the rules of networks and running containers are added
    /// again afterwards.
    pub fn setup(&self) -> Result<(), NetError> {
        for (t, c) in self.all() {
            if run(t, &["-n", "-L", c]).is_ok() {
                run(t, &["-F", c])?;
            } else if let Err(e) = run(t, &["-N", c]) {
                // Created meanwhile by someone else is fine.
                if run(t, &["-n", "-L", c]).is_err() {
                    return Err(e);
                }
            }
        }
        append("filter", &self.forward, &["-j".into(), self.iso1.clone()])?;
        for (t, c, rule) in self.jumps() {
            if !exists(t, c, &rule) {
                let mut a = vec!["-I".to_string(), c.to_string(), "1".into()];
                a.extend(rule);
                run_owned(t, &a)?;
            }
        }
        Ok(())
    }

    /// Removes the jumps and the chains (a clean shutdown).
    pub fn teardown(&self) {
        for (t, c, rule) in self.jumps() {
            while exists(t, c, &rule) {
                let mut a = vec!["-D".to_string(), c.to_string()];
                a.extend(rule.clone());
                if run_owned(t, &a).is_err() {
                    break;
                }
            }
        }
        for (t, c) in self.all() {
            let _ = run(t, &["-F", c]);
        }
        for (t, c) in self.all() {
            if let Err(e) = run(t, &["-X", c]) {
                tracing::warn!(table = t, chain = c, "cannot remove chain: {e}");
            }
        }
    }

    /// The rules of one network on bridge `br` with subnet `subnet`.
    /// An `internal` network gets no masquerading and no way out.
    pub fn network_rules(&self, br: &str, subnet: &str, internal: bool) -> Vec<Rule> {
        let r = |t: &'static str, c: &str, s: &[&str]| Rule {
            table: t,
            chain: c.to_string(),
            args: s.iter().map(|x| x.to_string()).collect(),
        };
        if internal {
            return vec![
                r(
                    "filter",
                    &self.iso1,
                    &["-i", br, "!", "-o", br, "-j", "DROP"],
                ),
                r(
                    "filter",
                    &self.iso1,
                    &["!", "-i", br, "-o", br, "-j", "DROP"],
                ),
                r(
                    "filter",
                    &self.forward,
                    &["-i", br, "-o", br, "-j", "ACCEPT"],
                ),
            ];
        }
        vec![
            r(
                "nat",
                &self.postrouting,
                &["-s", subnet, "!", "-o", br, "-j", "MASQUERADE"],
            ),
            r("nat", &self.nat, &["-i", br, "-j", "RETURN"]),
            r(
                "filter",
                &self.forward,
                &[
                    "-o",
                    br,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "RELATED,ESTABLISHED",
                    "-j",
                    "ACCEPT",
                ],
            ),
            r(
                "filter",
                &self.forward,
                &[
                    "-o",
                    br,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "DNAT",
                    "-j",
                    "ACCEPT",
                ],
            ),
            r(
                "filter",
                &self.forward,
                &["-i", br, "!", "-o", br, "-j", "ACCEPT"],
            ),
            r(
                "filter",
                &self.forward,
                &["-i", br, "-o", br, "-j", "ACCEPT"],
            ),
            r(
                "filter",
                &self.iso1,
                &["-i", br, "!", "-o", br, "-j", &self.iso2],
            ),
            r("filter", &self.iso2, &["-o", br, "-j", "DROP"]),
        ]
    }

    /// The DNAT rule of one published port.
    pub fn dnat_rule(
        &self,
        br: &str,
        host_ip: &str,
        host_port: u16,
        proto: &str,
        dest: &str,
    ) -> Rule {
        let mut args: Vec<String> = vec!["!".into(), "-i".into(), br.into()];
        if host_ip != "0.0.0.0" {
            args.extend(["-d".into(), format!("{host_ip}/32")]);
        }
        args.extend([
            "-p".into(),
            proto.into(),
            "-m".into(),
            proto.into(),
            "--dport".into(),
            host_port.to_string(),
            "-j".into(),
            "DNAT".into(),
            "--to-destination".into(),
            dest.into(),
        ]);
        Rule {
            table: "nat",
            chain: self.nat.clone(),
            args,
        }
    }
}

/// One rule of a chain.
#[derive(Debug, Clone)]
pub struct Rule {
    pub table: &'static str,
    pub chain: String,
    pub args: Vec<String>,
}

impl Rule {
    /// Appends the rule unless present (`RETURN` rules go first so they
    /// precede the chain's DNATs).
    pub fn add(&self) -> Result<(), NetError> {
        if exists(self.table, &self.chain, &self.args) {
            return Ok(());
        }
        let mut a = if self.args.last().map(String::as_str) == Some("RETURN") {
            vec!["-I".to_string(), self.chain.clone(), "1".into()]
        } else {
            vec!["-A".to_string(), self.chain.clone()]
        };
        a.extend(self.args.clone());
        run_owned(self.table, &a)
    }

    /// Deletes the rule (every copy); a missing rule is fine.
    pub fn del(&self) {
        while exists(self.table, &self.chain, &self.args) {
            let mut a = vec!["-D".to_string(), self.chain.clone()];
            a.extend(self.args.clone());
            if let Err(e) = run_owned(self.table, &a) {
                tracing::warn!("cannot delete iptables rule: {e}");
                break;
            }
        }
    }
}

fn append(table: &str, chain: &str, rule: &[String]) -> Result<(), NetError> {
    if exists(table, chain, rule) {
        return Ok(());
    }
    let mut a = vec!["-A".to_string(), chain.to_string()];
    a.extend(rule.iter().cloned());
    run_owned(table, &a)
}

fn exists(table: &str, chain: &str, rule: &[String]) -> bool {
    let mut a = vec!["-C".to_string(), chain.to_string()];
    a.extend(rule.iter().cloned());
    run_owned(table, &a).is_ok()
}

fn run(table: &str, args: &[&str]) -> Result<(), NetError> {
    let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run_owned(table, &owned)
}

fn run_owned(table: &str, args: &[String]) -> Result<(), NetError> {
    debug!(table, ?args, "iptables");
    let out = Command::new("iptables")
        .arg("-w")
        .arg("-t")
        .arg(table)
        .args(args)
        .output()
        .map_err(|e| NetError::Iptables(format!("cannot run iptables: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Iptables(format!(
            "iptables -t {table} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether `iptables -t nat -S` works here.
pub fn available() -> Result<(), NetError> {
    run("nat", &["-S"])
}
