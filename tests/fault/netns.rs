//! The network the fault suite's nodes live in: one network namespace per node, a full
//! mesh of veth pairs between them and one veth "client link" per node from the root
//! namespace, every address in 198.18.0.0/15 (RFC 2544's benchmarking range).
//!
//! Node `i` owns the /32 node address 198.18.0.(i+1) on its `lo`; it reaches node `j`
//! through a static route over their direct link only, and namespaces do not forward,
//! so cutting the a–b link cuts exactly that pair. The root end of client link `i` has
//! 198.18.1.(i+1) and a route to node `i` over that link, so clients in the test
//! process reach every node directly and a cut between nodes never touches them.
//!
//! Faults: [`Net::cut`] / [`Net::heal`] drop every packet between two nodes silently,
//! like a real partition (neither side gets an error, TCP just retransmits), with
//! `tc qdisc ... netem loss 100%` on both ends where the kernel has netem; where it
//! has not (`CONFIG_NET_SCH_NETEM` unset) both ends' static neighbour entries are
//! pointed at a MAC no interface has, so each frame reaches the peer's veth and is
//! dropped there as addressed to another host: silent as well, with iproute2 only.
//! [`Net::reset_links`] resets a node's cluster TCP connections with `ss -K` (needs
//! `CONFIG_INET_DIAG_DESTROY`).
//!
//! Every namespace is deleted when the [`Net`] is dropped, panic or not (deleting a
//! namespace deletes the veth ends in it, and so their peers and the routes over
//! them); namespaces left by earlier runs whose process is gone are deleted at start.
//! One [`Net`] exists at a time on the machine: it holds a lock file (made with
//! `create_new`, holding its pid; a lock whose process is gone is taken over) for its
//! lifetime, as the root-side addresses are the same in every run.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Every namespace this binary makes is called `hbf-<pid>-<n>-<node>`.
const PREFIX: &str = "hbf-";
/// A MAC address no interface has (locally administered): where a cut link's frames go.
const NOWHERE_MAC: &str = "02:00:00:00:00:fe";
/// Held by the live [`Net`] (see the module doc).
const LOCK_FILE: &str = "/tmp/hubbub-fault-netns.lock";

/// How a cut drops packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMethod {
    Netem,
    Neighbour,
}

/// One node-to-node link: the veth end in each of the two namespaces.
struct Link {
    /// (device in the lower node's namespace, device in the higher node's).
    devs: (String, String),
}

pub struct Net {
    namespaces: Vec<String>,
    /// The root namespace's ends of the client links.
    root_devs: Vec<String>,
    links: BTreeMap<(usize, usize), Link>,
    cut: BTreeMap<(usize, usize), bool>,
    pub method: CutMethod,
    _lock: Lock,
}

/// The machine-wide lock file of a live [`Net`]; removed when dropped.
struct Lock;

impl Lock {
    /// Takes the lock, waiting (bounded) while another live process holds it.
    fn take() -> Self {
        let started = std::time::Instant::now();
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(LOCK_FILE)
            {
                Ok(mut file) => {
                    use std::io::Write;
                    let _ = write!(file, "{}", std::process::id());
                    return Self;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(LOCK_FILE).unwrap_or_default();
                    let alive = !holder.trim().is_empty()
                        && std::path::Path::new(&format!("/proc/{}", holder.trim())).exists();
                    if !alive && started.elapsed() > std::time::Duration::from_millis(200) {
                        // Its process is gone (or never wrote its pid): take it over.
                        let _ = std::fs::remove_file(LOCK_FILE);
                        continue;
                    }
                    assert!(
                        started.elapsed() < std::time::Duration::from_secs(120),
                        "{LOCK_FILE} is held by live process {holder} for over 2 minutes: \
                         another fault suite run is using the namespaces"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => panic!("cannot create {LOCK_FILE}: {e}"),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(LOCK_FILE);
    }
}

/// Node `i`'s address.
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, i as u8 + 1)
}

/// The root namespace's address on node `i`'s client link.
fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, i as u8 + 1)
}

/// The MAC of the veth end in node `i`'s namespace on its link to `j`.
fn mac(i: usize, j: usize) -> String {
    format!("02:00:00:00:{:02x}:{:02x}", i + 1, j + 1)
}

/// Runs a command; panics with its output unless it succeeds. Returns stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    run("ip", args)
}

/// Fails the test with what is missing unless this process may make namespaces.
fn preflight() {
    let uid = run("id", &["-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "the fault suite (tests/fault) needs root: it makes network namespaces, veth \
         pairs and qdiscs. Run it as root (CI does), e.g. `sudo -E cargo nextest run --test fault`"
    );
    let probe = Command::new("ip").args(["netns", "list"]).output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "the fault suite needs `ip netns` (iproute2 with network namespace support): {probe:?}"
    );
}

/// Deletes `hbf-*` namespaces whose process is gone (an earlier run that was killed).
fn remove_stale() {
    for line in ip(&["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        let ours = pid == std::process::id().to_string();
        if !ours && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("[fault] removing stale namespace {name}");
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}

/// Waits (bounded) until no root-namespace interface holds a client-link address: a
/// deleted namespace's veth pairs go away asynchronously, and an earlier run's root
/// ends would make this run's addresses and routes collide ("File exists").
fn wait_root_addresses_gone() {
    let started = std::time::Instant::now();
    loop {
        let held = ip(&["-o", "addr", "show", "to", "198.18.1.0/24"]);
        if held.trim().is_empty() {
            return;
        }
        if started.elapsed() > std::time::Duration::from_secs(2) {
            // Left by a run whose namespaces are gone: delete those ends now.
            for dev in held.lines().filter_map(|l| l.split_whitespace().nth(1)) {
                let dev = dev.split('@').next().unwrap_or(dev);
                if dev.starts_with("hf") {
                    let _ = Command::new("ip").args(["link", "delete", dev]).status();
                }
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "root-namespace interfaces still hold 198.18.1.0/24 addresses: {held}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

impl Net {
    /// Makes `n` namespaces joined as described in the module doc.
    pub fn create(n: usize) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        preflight();
        let lock = Lock::take();
        remove_stale();
        wait_root_addresses_gone();
        let pid = std::process::id();
        let run_no = NEXT.fetch_add(1, Ordering::Relaxed);
        // Interface names have at most 15 bytes: "hf" + pid in hex + run + 2.
        let tag = format!("hf{pid:x}{}", run_no % 36);
        let namespaces: Vec<String> = (0..n)
            .map(|i| format!("{PREFIX}{pid}-{run_no}-{}", char::from(b'a' + i as u8)))
            .collect();
        let mut net = Self {
            namespaces: Vec::new(),
            root_devs: Vec::new(),
            links: BTreeMap::new(),
            cut: BTreeMap::new(),
            method: CutMethod::Neighbour,
            _lock: lock,
        };
        for (i, ns) in namespaces.iter().enumerate() {
            ip(&["netns", "add", ns]);
            net.namespaces.push(ns.clone());
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/32", node_addr(i)),
                "dev",
                "lo",
            ]);
            // Client link: root end `<tag>r<i>`, node end `<tag><i>r`.
            let (root_dev, node_dev) = (format!("{tag}r{i}"), format!("{tag}{i}r"));
            ip(&[
                "link", "add", &root_dev, "type", "veth", "peer", "name", &node_dev, "netns", ns,
            ]);
            net.root_devs.push(root_dev.clone());
            ip(&[
                "addr",
                "add",
                &format!("{}/32", client_addr(i)),
                "dev",
                &root_dev,
            ]);
            ip(&["link", "set", &root_dev, "up"]);
            ip(&["-n", ns, "link", "set", &node_dev, "up"]);
            let (node, client) = (node_addr(i).to_string(), client_addr(i).to_string());
            ip(&[
                "route",
                "add",
                &format!("{node}/32"),
                "dev",
                &root_dev,
                "src",
                &client,
            ]);
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                &format!("{client}/32"),
                "dev",
                &node_dev,
                "src",
                &node,
            ]);
        }
        for i in 0..n {
            for j in i + 1..n {
                let (di, dj) = (format!("{tag}{i}{j}"), format!("{tag}{j}{i}"));
                let (nsi, nsj) = (&namespaces[i], &namespaces[j]);
                ip(&[
                    "link",
                    "add",
                    &di,
                    "netns",
                    nsi,
                    "address",
                    &mac(i, j),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &dj,
                    "netns",
                    nsj,
                    "address",
                    &mac(j, i),
                ]);
                for (ns, dev, me, peer) in [(nsi, &di, i, j), (nsj, &dj, j, i)] {
                    ip(&["-n", ns, "link", "set", dev, "up"]);
                    let (me_addr, peer_addr) =
                        (node_addr(me).to_string(), node_addr(peer).to_string());
                    ip(&[
                        "-n",
                        ns,
                        "route",
                        "add",
                        &format!("{peer_addr}/32"),
                        "dev",
                        dev,
                        "src",
                        &me_addr,
                    ]);
                    // Static neighbours: no ARP, and a cut is a neighbour change.
                    ip(&[
                        "-n",
                        ns,
                        "neigh",
                        "replace",
                        &peer_addr,
                        "dev",
                        dev,
                        "lladdr",
                        &mac(peer, me),
                        "nud",
                        "permanent",
                    ]);
                }
                net.links.insert((i, j), Link { devs: (di, dj) });
                net.cut.insert((i, j), false);
            }
        }
        net.method = net.probe_netem();
        eprintln!(
            "[fault] {n} namespaces {namespaces:?}, cuts by {:?}",
            net.method
        );
        net
    }

    /// Netem where the kernel has it; the neighbour method otherwise.
    fn probe_netem(&self) -> CutMethod {
        let ns = &self.namespaces[0];
        let added = Command::new("ip")
            .args([
                "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "loss",
                "0%",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if added {
            let _ = Command::new("ip")
                .args([
                    "netns", "exec", ns, "tc", "qdisc", "del", "dev", "lo", "root",
                ])
                .status();
            CutMethod::Netem
        } else {
            CutMethod::Neighbour
        }
    }

    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    fn key(a: usize, b: usize) -> (usize, usize) {
        (a.min(b), a.max(b))
    }

    /// Both ends of the a–b link: (namespace, device, this node, the peer).
    fn ends(&self, a: usize, b: usize) -> [(String, String, usize, usize); 2] {
        let (lo, hi) = Self::key(a, b);
        let link = &self.links[&(lo, hi)];
        [
            (self.namespaces[lo].clone(), link.devs.0.clone(), lo, hi),
            (self.namespaces[hi].clone(), link.devs.1.clone(), hi, lo),
        ]
    }

    pub fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut[&Self::key(a, b)]
    }

    /// Silently drops everything between `a` and `b`, both ways.
    pub fn cut(&mut self, a: usize, b: usize) {
        if self.is_cut(a, b) {
            return;
        }
        for (ns, dev, _, peer) in self.ends(a, b) {
            match self.method {
                CutMethod::Netem => {
                    run(
                        "ip",
                        &[
                            "netns", "exec", &ns, "tc", "qdisc", "add", "dev", &dev, "root",
                            "netem", "loss", "100%",
                        ],
                    );
                }
                CutMethod::Neighbour => {
                    ip(&[
                        "-n",
                        &ns,
                        "neigh",
                        "replace",
                        &node_addr(peer).to_string(),
                        "dev",
                        &dev,
                        "lladdr",
                        NOWHERE_MAC,
                        "nud",
                        "permanent",
                    ]);
                }
            }
        }
        self.cut.insert(Self::key(a, b), true);
    }

    /// Undoes [`Net::cut`].
    pub fn heal(&mut self, a: usize, b: usize) {
        if !self.is_cut(a, b) {
            return;
        }
        for (ns, dev, me, peer) in self.ends(a, b) {
            match self.method {
                CutMethod::Netem => {
                    run(
                        "ip",
                        &[
                            "netns", "exec", &ns, "tc", "qdisc", "del", "dev", &dev, "root",
                        ],
                    );
                }
                CutMethod::Neighbour => {
                    ip(&[
                        "-n",
                        &ns,
                        "neigh",
                        "replace",
                        &node_addr(peer).to_string(),
                        "dev",
                        &dev,
                        "lladdr",
                        &mac(peer, me),
                        "nud",
                        "permanent",
                    ]);
                }
            }
        }
        self.cut.insert(Self::key(a, b), false);
    }

    /// Cuts `a` from every other node (its clients still reach it).
    pub fn isolate(&mut self, a: usize) {
        for b in 0..self.namespaces.len() {
            if b != a {
                self.cut(a, b);
            }
        }
    }

    /// Heals every cut link.
    pub fn heal_all(&mut self) {
        let cut: Vec<(usize, usize)> = self
            .cut
            .iter()
            .filter(|(_, c)| **c)
            .map(|(k, _)| *k)
            .collect();
        for (a, b) in cut {
            self.heal(a, b);
        }
    }

    /// Resets (TCP RST, `ss -K`) every TCP connection of node `a` to another node's
    /// address; returns how many sockets were killed.
    pub fn reset_links(&self, a: usize) -> usize {
        let mut killed = 0;
        for b in 0..self.namespaces.len() {
            if b == a {
                continue;
            }
            let out = run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.namespaces[a],
                    "ss",
                    "-K",
                    "-t",
                    "-n",
                    "dst",
                    &node_addr(b).to_string(),
                ],
            );
            // One header line, then one line per socket killed.
            killed += out.lines().skip(1).filter(|l| !l.trim().is_empty()).count();
        }
        killed
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a veth end at once deletes its pair; a namespace's own go later.
        for dev in &self.root_devs {
            let _ = Command::new("ip").args(["link", "delete", dev]).status();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}
