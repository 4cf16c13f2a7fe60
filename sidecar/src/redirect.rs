//! `tollgate init-redirect`: the pod boundary in redirect mode, drawn as Istio's and Linkerd's
//! init containers draw it. It runs once in the pod's network namespace, before any other
//! container starts, and exits:
//!
//! ```text
//! nat    PREROUTING ─> TOLLGATE_INBOUND  tcp dport APP            ─> REDIRECT to PROXY  (from outside the pod)
//! nat    OUTPUT     ─> TOLLGATE_LOCAL    owner uid AND gid PROXY's ─> RETURN             (the sidecar reaches the app)
//!                                        tcp dport APP, dst local  ─> REDIRECT to PROXY  (the pod's other containers)
//! filter INPUT      ─> TOLLGATE_GUARD    tcp, udp, sctp dport APP,
//!                                        not on lo                 ─> DROP               (anything the nat table missed,
//!                                                                                         and every other protocol)
//! ```
//!
//! The guard is what keeps the boundary if a connection is not translated (conntrack marked it
//! untracked, or it predates the rules): after a redirect its port is PROXY, so whatever still
//! arrives for APP from outside went around the sidecar. Other ports and outbound traffic are
//! untouched. Each jump is inserted first in its chain, so no earlier rule can skip it.
//!
//! Idempotent: a chain is created if absent and flushed, and a jump is added only if absent, so
//! a second run leaves one set. IPv4 with `iptables`, IPv6 with `ip6tables`; the nft or the
//! legacy back end. Whatever it cannot install is an error and a non-zero exit, so the pod does
//! not start without its boundary.

use std::fmt;
use std::process::Command;

/// The chains this step owns (and nothing else).
pub const INBOUND: &str = "TOLLGATE_INBOUND";
pub const LOCAL: &str = "TOLLGATE_LOCAL";
pub const GUARD: &str = "TOLLGATE_GUARD";

/// What to redirect where.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The app's MCP ports: inbound TCP to them goes to the sidecar.
    pub ports: Vec<u16>,
    /// The sidecar's listening port.
    pub proxy_port: u16,
    /// The sidecar's UID and GID: its own connections to the app (both must match) are not
    /// redirected.
    pub proxy_uid: u32,
    pub proxy_gid: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    pub fn binary(self, family: Family) -> &'static str {
        match (self, family) {
            (Backend::Nft, Family::V4) => "iptables-nft",
            (Backend::Nft, Family::V6) => "ip6tables-nft",
            (Backend::Legacy, Family::V4) => "iptables-legacy",
            (Backend::Legacy, Family::V6) => "ip6tables-legacy",
        }
    }
}

/// One change to the rules, in the order it is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `-N chain` unless it exists, then `-F chain`.
    Chain {
        table: &'static str,
        chain: &'static str,
    },
    /// `-A chain rule…`
    Rule {
        table: &'static str,
        chain: &'static str,
        rule: Vec<String>,
    },
    /// `-A chain rule…` where the kernel can match it (SCTP is a module some kernels lack, and
    /// then nothing can reach the port by it either); skipped, saying so, where it cannot.
    RuleIfSupported {
        table: &'static str,
        chain: &'static str,
        rule: Vec<String>,
    },
    /// `-I parent 1 -j chain` unless `-C` finds it.
    Jump {
        table: &'static str,
        parent: &'static str,
        rule: Vec<String>,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Chain { table, chain } => write!(f, "-t {table} -N {chain}"),
            Step::Rule { table, chain, rule } | Step::RuleIfSupported { table, chain, rule } => {
                write!(f, "-t {table} -A {chain} {}", rule.join(" "))
            }
            Step::Jump {
                table,
                parent,
                rule,
            } => write!(f, "-t {table} -I {parent} 1 {}", rule.join(" ")),
        }
    }
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// The steps that install `plan` (pure, so its cases are tested on their own). The same for
/// both families: `ip6tables` takes every match used here.
pub fn steps(plan: &Plan) -> Vec<Step> {
    let ports = |p: &u16| p.to_string();
    let list: Vec<String> = plan.ports.iter().map(ports).collect();
    // One multiport match, up to its 15 ports; more are rare enough to take one rule each.
    let matches: Vec<String> = if list.len() == 1 {
        vec![format!("--dport {}", list[0])]
    } else {
        list.chunks(15)
            .map(|c| format!("-m multiport --dports {}", c.join(",")))
            .collect()
    };
    let proxy = plan.proxy_port;
    let mut out = vec![
        Step::Chain {
            table: "nat",
            chain: INBOUND,
        },
        Step::Chain {
            table: "nat",
            chain: LOCAL,
        },
        Step::Chain {
            table: "filter",
            chain: GUARD,
        },
    ];
    for m in &matches {
        out.push(Step::Rule {
            table: "nat",
            chain: INBOUND,
            rule: words(&format!("-p tcp {m} -j REDIRECT --to-ports {proxy}")),
        });
    }
    out.push(Step::Rule {
        table: "nat",
        chain: LOCAL,
        rule: words(&match plan.proxy_gid {
            Some(gid) => format!(
                "-p tcp -m owner --uid-owner {} --gid-owner {gid} -j RETURN",
                plan.proxy_uid
            ),
            None => format!("-p tcp -m owner --uid-owner {} -j RETURN", plan.proxy_uid),
        }),
    });
    for m in &matches {
        out.push(Step::Rule {
            table: "nat",
            chain: LOCAL,
            rule: words(&format!(
                "-p tcp {m} -m addrtype --dst-type LOCAL -j REDIRECT --to-ports {proxy}"
            )),
        });
    }
    // The redirect covers TCP; the guard keeps every other protocol off the app's port too.
    for proto in ["tcp", "udp"] {
        for m in &matches {
            out.push(Step::Rule {
                table: "filter",
                chain: GUARD,
                rule: words(&format!("-p {proto} {m} ! -i lo -j DROP")),
            });
        }
    }
    for m in &matches {
        out.push(Step::RuleIfSupported {
            table: "filter",
            chain: GUARD,
            rule: words(&format!("-p sctp {m} ! -i lo -j DROP")),
        });
    }
    out.extend([
        Step::Jump {
            table: "nat",
            parent: "PREROUTING",
            rule: words(&format!("-p tcp -j {INBOUND}")),
        },
        Step::Jump {
            table: "nat",
            parent: "OUTPUT",
            rule: words(&format!("-p tcp -j {LOCAL}")),
        },
        Step::Jump {
            table: "filter",
            parent: "INPUT",
            rule: words(&format!("-j {GUARD}")),
        },
    ]);
    out
}

/// Why the rules could not be installed, in words a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{binary} is not installed in this image (init-redirect needs the iptables tools; or choose the other --backend)"
    )]
    Missing { binary: &'static str },
    #[error(
        "init-redirect cannot change the pod's network rules: it needs the NET_ADMIN and NET_RAW capabilities \
         (`{binary} {args}` said: {said})"
    )]
    NotPermitted {
        binary: &'static str,
        args: String,
        said: String,
    },
    #[error("`{binary} {args}` failed: {said}")]
    Failed {
        binary: &'static str,
        args: String,
        said: String,
    },
}

/// Runs `binary args`; Ok(false) when it ran and said no (as `-C` does for an absent rule).
fn run(binary: &'static str, args: &[String]) -> Result<bool, Error> {
    let out = Command::new(binary)
        .args(args)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Missing { binary },
            _ => Error::Failed {
                binary,
                args: args.join(" "),
                said: e.to_string(),
            },
        })?;
    if out.status.success() {
        return Ok(true);
    }
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if said.contains("Permission denied") || said.contains("Operation not permitted") {
        return Err(Error::NotPermitted {
            binary,
            args: args.join(" "),
            said,
        });
    }
    // `-C` and `-S CHAIN` answer "no" with status 1 and a message; anything else is a failure.
    if out.status.code() == Some(1)
        && (said.contains("does a matching rule exist")
            || said.contains("No chain/target/match by that name")
            || (said.contains("chain `") && said.contains("' in table")))
    {
        return Ok(false);
    }
    Err(Error::Failed {
        binary,
        args: args.join(" "),
        said,
    })
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Installs `steps` with `binary`, returning the lines it printed (what is now in force).
pub fn install(binary: &'static str, steps: &[Step]) -> Result<Vec<String>, Error> {
    let mut said = Vec::new();
    for step in steps {
        match step {
            Step::Chain { table, chain } => {
                if !run(binary, &strings(&["-t", table, "-S", chain]))? {
                    run(binary, &strings(&["-t", table, "-N", chain]))?;
                }
                run(binary, &strings(&["-t", table, "-F", chain]))?;
            }
            Step::Rule { table, chain, rule } => {
                let mut args = strings(&["-t", table, "-A", chain]);
                args.extend(rule.iter().cloned());
                run(binary, &args)?;
                said.push(format!("{binary} {step}"));
            }
            Step::RuleIfSupported { table, chain, rule } => {
                let mut args = strings(&["-t", table, "-A", chain]);
                args.extend(rule.iter().cloned());
                match run(binary, &args) {
                    Ok(_) => said.push(format!("{binary} {step}")),
                    Err(e @ Error::NotPermitted { .. }) => return Err(e),
                    Err(e) => said.push(format!(
                        "skipped (this kernel cannot match it): {binary} {step}: {e}"
                    )),
                }
            }
            Step::Jump {
                table,
                parent,
                rule,
            } => {
                let mut check = strings(&["-t", table, "-C", parent]);
                check.extend(rule.iter().cloned());
                if !run(binary, &check)? {
                    let mut args = strings(&["-t", table, "-I", parent, "1"]);
                    args.extend(rule.iter().cloned());
                    run(binary, &args)?;
                }
                said.push(format!("{binary} {step}"));
            }
        }
    }
    Ok(said)
}

/// The back end to use when not told: the one already holding rules in this namespace (as
/// Kubernetes' iptables-wrapper decides), else nft when it works here, else legacy.
pub fn detect_backend() -> Backend {
    let rules = |binary: &str| {
        Command::new(binary)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.starts_with("-A "))
                    .count()
            })
    };
    match (rules("iptables-nft-save"), rules("iptables-legacy-save")) {
        (Some(0) | None, Some(n)) if n > 0 => Backend::Legacy,
        (Some(_), _) => Backend::Nft,
        (None, _) => Backend::Legacy,
    }
}

/// IPv6 is on in this namespace (then its rules are required, or IPv6 would go around them).
pub fn ipv6_enabled() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|s| !s.trim().is_empty())
        || std::path::Path::new("/proc/sys/net/ipv6/conf/all").exists()
            && std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
                .is_ok_and(|s| s.trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(ports: &[u16]) -> Plan {
        Plan {
            ports: ports.to_vec(),
            proxy_port: 15480,
            proxy_uid: 2417,
            proxy_gid: Some(2418),
        }
    }

    fn lines(plan: &Plan) -> Vec<String> {
        steps(plan).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn one_port_is_redirected_from_outside_and_from_the_pods_other_containers_but_not_for_the_sidecar_and_guarded_for_every_protocol()
     {
        assert_eq!(
            lines(&plan(&[8000])),
            [
                "-t nat -N TOLLGATE_INBOUND",
                "-t nat -N TOLLGATE_LOCAL",
                "-t filter -N TOLLGATE_GUARD",
                "-t nat -A TOLLGATE_INBOUND -p tcp --dport 8000 -j REDIRECT --to-ports 15480",
                "-t nat -A TOLLGATE_LOCAL -p tcp -m owner --uid-owner 2417 --gid-owner 2418 -j RETURN",
                "-t nat -A TOLLGATE_LOCAL -p tcp --dport 8000 -m addrtype --dst-type LOCAL -j REDIRECT --to-ports 15480",
                "-t filter -A TOLLGATE_GUARD -p tcp --dport 8000 ! -i lo -j DROP",
                "-t filter -A TOLLGATE_GUARD -p udp --dport 8000 ! -i lo -j DROP",
                "-t filter -A TOLLGATE_GUARD -p sctp --dport 8000 ! -i lo -j DROP",
                "-t nat -I PREROUTING 1 -p tcp -j TOLLGATE_INBOUND",
                "-t nat -I OUTPUT 1 -p tcp -j TOLLGATE_LOCAL",
                "-t filter -I INPUT 1 -j TOLLGATE_GUARD",
            ]
        );
    }

    #[test]
    fn the_sidecars_exemption_comes_before_any_local_redirect() {
        let all = lines(&plan(&[8000, 8001]));
        let exempt = all.iter().position(|l| l.contains("--uid-owner")).unwrap();
        let redirect = all
            .iter()
            .position(|l| l.contains("TOLLGATE_LOCAL -p tcp -m multiport"))
            .unwrap();
        assert!(exempt < redirect);
    }

    #[test]
    fn several_ports_share_a_multiport_rule_of_at_most_fifteen() {
        let ports: Vec<u16> = (8000..8020).collect();
        let inbound: Vec<String> = lines(&plan(&ports))
            .into_iter()
            .filter(|l| l.contains("-A TOLLGATE_INBOUND"))
            .collect();
        assert_eq!(inbound.len(), 2);
        assert!(inbound[0].contains(
            "--dports 8000,8001,8002,8003,8004,8005,8006,8007,8008,8009,8010,8011,8012,8013,8014 "
        ));
        assert!(inbound[1].contains("--dports 8015,8016,8017,8018,8019 "));
    }

    #[test]
    fn outbound_traffic_and_other_ports_are_left_alone() {
        for line in lines(&plan(&[8000])) {
            if line.contains("REDIRECT") || line.contains("DROP") {
                assert!(line.contains("--dport 8000"), "{line}");
            }
            if line.contains("TOLLGATE_LOCAL") && line.contains("REDIRECT") {
                assert!(
                    line.contains("--dst-type LOCAL"),
                    "only connections to the pod itself: {line}"
                );
            }
        }
    }
}
