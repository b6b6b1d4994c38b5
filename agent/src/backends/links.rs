//! Instances' network interfaces on the host: the taps QEMU attaches to (kvm), the network
//! namespace and veth pairs a process instance (unix, js) runs in, and the sweep that removes what a crash
//! left behind. Xen needs none of this: the toolstack makes and removes its vifs.
//!
//! Every name is derived from the instance ID, so a start, a destroy after an agent restart and
//! the sweep all find them without a record:
//!
//! - interface K of a kvm instance is the tap `mt` + the ID's low 48 bits (12 hex digits) + K;
//! - interface K of a process instance is a veth pair: the host end `mv` + the same + K, joined to
//!   the bridge, and its peer `ethK` inside the instance's namespace;
//! - a process instance with interfaces runs in the namespace `mirari-<ID>` (`/run/netns/...`).
//!
//! Link names have 15 characters, the most the kernel allows (IFNAMSIZ), so they carry only
//! 48 bits of the 64-bit ID: two instances' names collide if their IDs agree in those bits.
//! So every link is marked with its whole instance ID in its alias (`mirari instance <ID>`),
//! and a link marked for another instance is never reused nor removed: the start fails
//! instead. A link with one of our names but no mark can only have been left by a start that
//! died between making and marking it.
//!
//! The decisions (names, the command lists, what a destroy or sweep removes) are pure
//! functions; [`ip`] is the one place where a command runs.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mirari_core::ids::InstanceId;
use mirari_core::limits::MAX_INTERFACES;
use mirari_core::network::Interface;
use serde::Deserialize;

use super::Launch;

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";
const NETNS_PREFIX: &str = "mirari-";
const TAP_PREFIX: &str = "mt";
const VETH_PREFIX: &str = "mv";
const MARK_PREFIX: &str = "mirari instance ";
/// The ID bits a link name carries.
const TAG_MASK: u64 = (1 << 48) - 1;
/// The longest interface name (IFNAMSIZ less its NUL).
const IFNAME_MAX: usize = 15;
/// How long one `ip` command may take.
const IP_TIMEOUT: Duration = Duration::from_secs(30);

// An interface's index is one decimal digit of its link name, which fits IFNAMSIZ.
const _: () = assert!(MAX_INTERFACES <= 10 && TAP_PREFIX.len() + 12 < IFNAME_MAX);
const _: () = assert!(VETH_PREFIX.len() == TAP_PREFIX.len());

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("network {network} is not carried by this host (start the agent with --network {network}=BRIDGE)")]
    NotCarried { network: String },
    #[error(
        "{name} belongs to instance {owner}, whose ID agrees with {id}'s in the 48 bits link names carry; \
         this instance cannot start on this host while that one runs"
    )]
    Taken { name: String, id: InstanceId, owner: InstanceId },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("`{command}` did not finish within {IP_TIMEOUT:?}")]
    TimedOut { command: String },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read what `{command}` printed: {reason}")]
    Unreadable { command: String, reason: String },
    #[error("cannot list the network namespaces in {NETNS_DIR}")]
    Namespaces(#[source] io::Error),
}

/// The tap of a kvm instance's interface `index`.
pub fn tap_name(id: InstanceId, index: usize) -> String {
    link_name(TAP_PREFIX, id, index)
}

/// The host end of a unix instance's veth pair for interface `index`.
pub fn veth_name(id: InstanceId, index: usize) -> String {
    link_name(VETH_PREFIX, id, index)
}

fn link_name(prefix: &str, id: InstanceId, index: usize) -> String {
    assert!(index < MAX_INTERFACES, "interface index {index} beyond the limit");
    format!("{prefix}{:012x}{index}", id.as_u64() & TAG_MASK)
}

/// The network namespace of a unix instance with interfaces.
pub fn netns_name(id: InstanceId) -> String {
    format!("{NETNS_PREFIX}{id}")
}

pub fn netns_path(id: InstanceId) -> PathBuf {
    Path::new(NETNS_DIR).join(netns_name(id))
}

/// The alias that marks a link as `id`'s.
fn mark(id: InstanceId) -> String {
    format!("{MARK_PREFIX}{id}")
}

/// The instance a link name of ours is derived from, as far as the name tells: the ID's tag.
fn tag_of(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(TAP_PREFIX).or_else(|| name.strip_prefix(VETH_PREFIX))?;
    let (hex, index) = rest.split_at_checked(12)?;
    let index_ok = index.len() == 1 && index.parse::<usize>().is_ok_and(|i| i < MAX_INTERFACES);
    let hex_ok = hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (index_ok && hex_ok).then(|| u64::from_str_radix(hex, 16).ok()).flatten()
}

fn tag(id: InstanceId) -> u64 {
    id.as_u64() & TAG_MASK
}

/// A link on the host, as `ip -j link show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Link {
    #[serde(rename = "ifname")]
    pub name: String,
    #[serde(rename = "ifalias", default)]
    pub alias: Option<String>,
}

/// Whose a link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Marked(InstanceId),
    /// One of our names without a mark: the instance is known by its tag only.
    Unmarked(u64),
    NotOurs,
}

impl Link {
    fn owner(&self) -> Owner {
        let marked = self.alias.as_deref().and_then(|a| a.strip_prefix(MARK_PREFIX)).and_then(|id| id.parse().ok());
        match (marked, tag_of(&self.name)) {
            (Some(id), _) => Owner::Marked(id),
            (None, Some(tag)) => Owner::Unmarked(tag),
            (None, None) => Owner::NotOurs,
        }
    }
}

/// One interface of an instance and the bridge it joins on this host.
#[derive(Debug, Clone, Copy)]
pub struct Attachment<'a> {
    pub index: usize,
    pub interface: &'a Interface,
    pub bridge: &'a str,
}

/// The instance's interfaces with their bridges; an error for the first whose network this
/// host does not carry.
pub fn attachments(launch: &Launch) -> Result<Vec<Attachment<'_>>, LinkError> {
    launch
        .spec
        .interfaces
        .iter()
        .enumerate()
        .map(|(index, interface)| match launch.bridges.get(index).map(String::as_str) {
            Some(bridge) if !bridge.is_empty() => Ok(Attachment { index, interface, bridge }),
            _ => Err(LinkError::NotCarried { network: interface.network.clone() }),
        })
        .collect()
}

type Command = Vec<String>;

fn command(words: &[&str]) -> Command {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// Marks a freshly made host link as `id`'s, joins it to its bridge, and brings it up.
fn attach(name: &str, id: InstanceId, bridge: &str) -> Command {
    command(&["link", "set", "dev", name, "alias", &mark(id), "master", bridge, "up"])
}

/// The `ip` commands that make a kvm instance's taps.
fn tap_plan(id: InstanceId, attachments: &[Attachment]) -> Vec<Command> {
    attachments
        .iter()
        .flat_map(|a| {
            let name = tap_name(id, a.index);
            [command(&["tuntap", "add", "dev", &name, "mode", "tap"]), attach(&name, id, a.bridge)]
        })
        .collect()
}

/// The `ip` commands that make a unix instance's namespace: loopback up, a veth pair per
/// interface with its peer `ethK` inside (the instance's MAC and address), and a default route
/// through the first interface's gateway if it has one.
fn netns_plan(id: InstanceId, attachments: &[Attachment]) -> Vec<Command> {
    let ns = netns_name(id);
    let mut plan = vec![command(&["netns", "add", &ns]), command(&["-n", &ns, "link", "set", "dev", "lo", "up"])];
    for a in attachments {
        let (host, inside) = (veth_name(id, a.index), format!("eth{}", a.index));
        let (mac, address) = (a.interface.mac.to_string(), a.interface.address.to_string());
        plan.extend([
            command(&["link", "add", &host, "type", "veth", "peer", "name", &inside, "address", &mac, "netns", &ns]),
            attach(&host, id, a.bridge),
            command(&["-n", &ns, "address", "add", &address, "dev", &inside]),
            command(&["-n", &ns, "link", "set", "dev", &inside, "up"]),
        ]);
    }
    if let Some(gateway) = attachments.first().and_then(|a| a.interface.gateway) {
        plan.push(command(&["-n", &ns, "route", "add", "default", "via", &gateway.to_string(), "dev", "eth0"]));
    }
    plan
}

/// Refuses names another instance has marked as its own.
fn check_free(links: &[Link], names: &[String], id: InstanceId) -> Result<(), LinkError> {
    for link in links.iter().filter(|l| names.contains(&l.name)) {
        if let Owner::Marked(owner) = link.owner()
            && owner != id
        {
            return Err(LinkError::Taken { name: link.name.clone(), id, owner });
        }
    }
    Ok(())
}

/// The links that are `id`'s: marked for it, or unmarked with one of its names.
fn links_of(links: &[Link], id: InstanceId) -> Vec<String> {
    links
        .iter()
        .filter(|l| match l.owner() {
            Owner::Marked(owner) => owner == id,
            Owner::Unmarked(tag_) => tag_ == tag(id),
            Owner::NotOurs => false,
        })
        .map(|l| l.name.clone())
        .collect()
}

/// The namespaces of instances this agent owns that are not live.
fn leaked_namespaces(names: &[String], owned: &BTreeSet<InstanceId>, live: &BTreeSet<InstanceId>) -> Vec<String> {
    names
        .iter()
        .filter(|name| {
            let id = name.strip_prefix(NETNS_PREFIX).and_then(|id| id.parse::<InstanceId>().ok());
            id.is_some_and(|id| owned.contains(&id) && !live.contains(&id))
        })
        .cloned()
        .collect()
}

/// The links of instances this agent owns that are not live. An unmarked link goes only if an
/// owned, ended instance has its tag and no live one does.
fn leaked_links(links: &[Link], owned: &BTreeSet<InstanceId>, live: &BTreeSet<InstanceId>) -> Vec<String> {
    let ended = |id: &InstanceId| owned.contains(id) && !live.contains(id);
    links
        .iter()
        .filter(|l| match l.owner() {
            Owner::Marked(id) => ended(&id),
            Owner::Unmarked(t) => {
                owned.iter().any(|id| tag(*id) == t && ended(id)) && !live.iter().any(|id| tag(*id) == t)
            }
            Owner::NotOurs => false,
        })
        .map(|l| l.name.clone())
        .collect()
}

/// Runs `ip ARGS`; what it printed, or an error with the command and its stderr.
async fn ip(args: &[String]) -> Result<String, LinkError> {
    let text = || format!("ip {}", args.join(" "));
    let run =
        tokio::process::Command::new("ip").args(args).stdin(std::process::Stdio::null()).kill_on_drop(true).output();
    let output = tokio::time::timeout(IP_TIMEOUT, run)
        .await
        .map_err(|_| LinkError::TimedOut { command: text() })?
        .map_err(|source| LinkError::Spawn { command: text(), source })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(LinkError::Failed { command: text(), stderr });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

async fn list_links() -> Result<Vec<Link>, LinkError> {
    let args = command(&["-j", "link", "show"]);
    let json = ip(&args).await?;
    serde_json::from_str(&json)
        .map_err(|e| LinkError::Unreadable { command: format!("ip {}", args.join(" ")), reason: e.to_string() })
}

fn list_namespaces() -> Result<Vec<String>, LinkError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        entries => entries.map_err(LinkError::Namespaces)?,
    };
    let names = entries.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()));
    names.collect::<Result<_, _>>().map_err(LinkError::Namespaces)
}

async fn delete_namespace(name: &str) -> Result<(), LinkError> {
    ip(&command(&["netns", "delete", name])).await.map(drop)
}

async fn delete_link(name: &str) -> Result<(), LinkError> {
    ip(&command(&["link", "delete", "dev", name])).await.map(drop)
}

/// Runs `plan` after checking its link names are free; removes what it made if a step fails.
async fn set_up(launch: &Launch, names: &[String], plan: &[Command]) -> Result<(), LinkError> {
    let links = list_links().await?;
    check_free(&links, names, launch.id)?;
    // Whatever an earlier start of this instance left goes first, so each step starts clean.
    release_listed(launch, &links).await?;
    for step in plan {
        if let Err(error) = ip(step).await {
            undo(launch).await;
            return Err(error);
        }
    }
    Ok(())
}

/// Makes a kvm instance's taps, one per interface, each joined to its bridge.
pub async fn create_taps(launch: &Launch) -> Result<(), LinkError> {
    let attachments = attachments(launch)?;
    let names: Vec<String> = attachments.iter().map(|a| tap_name(launch.id, a.index)).collect();
    set_up(launch, &names, &tap_plan(launch.id, &attachments)).await
}

/// Makes a process instance's (unix, js) network namespace; its path, or `None` for an instance without
/// interfaces (which runs in the host's network).
pub async fn create_netns(launch: &Launch) -> Result<Option<PathBuf>, LinkError> {
    let attachments = attachments(launch)?;
    if attachments.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = attachments.iter().map(|a| veth_name(launch.id, a.index)).collect();
    set_up(launch, &names, &netns_plan(launch.id, &attachments)).await?;
    Ok(Some(netns_path(launch.id)))
}

/// Removes the instance's namespace (and so its veth pairs) and links; there may be none.
pub async fn release(launch: &Launch) -> Result<(), LinkError> {
    if launch.spec.interfaces.is_empty() {
        return Ok(());
    }
    release_listed(launch, &list_links().await?).await
}

/// [`release`], given the host's links as listed a moment ago.
async fn release_listed(launch: &Launch, links: &[Link]) -> Result<(), LinkError> {
    if netns_path(launch.id).exists() {
        delete_namespace(&netns_name(launch.id)).await?;
    }
    for name in links_of(links, launch.id) {
        if let Err(error) = delete_link(&name).await {
            // The kernel removes a deleted namespace's veth pairs in the background, so a host
            // end listed a moment ago may be gone by the time it is deleted: the outcome wanted.
            if links_of(&list_links().await?, launch.id).contains(&name) {
                return Err(error);
            }
        }
    }
    Ok(())
}

/// Removes what a start that failed made. The start's error is the one to report, so a failure
/// here is only logged; the sweep or the next start removes what is left.
pub async fn undo(launch: &Launch) {
    if let Err(error) = release(launch).await {
        tracing::warn!(id = %launch.id, %error, "could not remove the network of a failed start");
    }
}

/// Removes the taps, veths and namespaces of the instances in `owned` (this agent's) that are
/// not `live`; what it removed, for the log. Other agents' instances on the same host are left
/// alone. Run it before starting anything: a start running meanwhile could lose its links.
pub async fn sweep_links(owned: &BTreeSet<InstanceId>, live: &BTreeSet<InstanceId>) -> Result<Vec<String>, LinkError> {
    let mut removed = Vec::new();
    if owned.is_subset(live) {
        // Nothing can have leaked; a host without `ip` is not asked for it.
        return Ok(removed);
    }
    for name in leaked_namespaces(&list_namespaces()?, owned, live) {
        delete_namespace(&name).await?;
        removed.push(format!("network namespace {name}"));
    }
    // Listed after the namespaces went, which took their veth pairs with them.
    for name in leaked_links(&list_links().await?, owned, live) {
        delete_link(&name).await?;
        removed.push(format!("link {name}"));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: InstanceId = InstanceId::from_u64(0x1122_3344_5566_7788);
    /// Agrees with `ID` in the low 48 bits.
    const TWIN: InstanceId = InstanceId::from_u64(0x9922_3344_5566_7788);

    fn launch(interfaces: &[(&str, Option<&str>, &str)]) -> Launch {
        crate::backends::testing::launch(mirari_core::target::Target::Unix, ID.as_u64(), interfaces)
    }

    fn link(name: &str, alias: Option<String>) -> Link {
        Link { name: name.into(), alias }
    }

    #[test]
    fn names_come_from_the_id_and_fit_ifnamsiz() {
        assert_eq!(tap_name(ID, 0), "mt3344556677880");
        assert_eq!(veth_name(ID, 7), "mv3344556677887");
        assert_eq!(netns_name(ID), "mirari-1122334455667788");
        assert_eq!(netns_path(ID), Path::new("/run/netns/mirari-1122334455667788"));
        for name in
            [tap_name(InstanceId::from_u64(u64::MAX), MAX_INTERFACES - 1), veth_name(InstanceId::from_u64(0), 0)]
        {
            assert_eq!(name.len(), IFNAME_MAX, "{name}");
        }
        assert_eq!(tag_of(&tap_name(ID, 3)), Some(tag(ID)));
        for not_ours in ["eth0", "mt334455667788", "mt33445566778x0", "mx3344556677880", "mt334455667788a", "mtestbr0"]
        {
            assert_eq!(tag_of(not_ours), None, "{not_ours}");
        }
    }

    #[test]
    fn a_network_this_host_does_not_carry_is_named() {
        let ok = launch(&[("10.123.0.2/24", None, "br0"), ("10.124.0.2/24", None, "br1")]);
        let found: Vec<(usize, &str)> = attachments(&ok).unwrap().iter().map(|a| (a.index, a.bridge)).collect();
        assert_eq!(found, [(0, "br0"), (1, "br1")]);
        let mut missing = launch(&[("10.123.0.2/24", None, "br0"), ("10.124.0.2/24", None, "")]);
        let expected = "network net1 is not carried by this host (start the agent with --network net1=BRIDGE)";
        assert_eq!(attachments(&missing).unwrap_err().to_string(), expected);
        missing.bridges.pop();
        assert_eq!(attachments(&missing).unwrap_err().to_string(), expected);
    }

    #[test]
    fn a_tap_is_made_marked_and_joined_to_its_bridge() {
        let l = launch(&[("10.123.0.2/24", None, "br0")]);
        let plan = tap_plan(ID, &attachments(&l).unwrap());
        assert_eq!(
            plan,
            [
                command(&["tuntap", "add", "dev", "mt3344556677880", "mode", "tap"]),
                command(&[
                    "link",
                    "set",
                    "dev",
                    "mt3344556677880",
                    "alias",
                    "mirari instance 1122334455667788",
                    "master",
                    "br0",
                    "up"
                ]),
            ]
        );
    }

    #[test]
    fn a_namespace_gets_loopback_a_veth_per_interface_and_the_first_gateway() {
        let l = launch(&[("10.123.0.2/24", Some("10.123.0.1"), "br0"), ("10.124.0.2/16", Some("10.124.0.1"), "br1")]);
        let plan: Vec<String> = netns_plan(ID, &attachments(&l).unwrap()).iter().map(|c| c.join(" ")).collect();
        let ns = "mirari-1122334455667788";
        let mark = "mirari instance 1122334455667788";
        assert_eq!(
            plan,
            [
                format!("netns add {ns}"),
                format!("-n {ns} link set dev lo up"),
                format!("link add mv3344556677880 type veth peer name eth0 address 02:55:66:77:88:00 netns {ns}"),
                format!("link set dev mv3344556677880 alias {mark} master br0 up"),
                format!("-n {ns} address add 10.123.0.2/24 dev eth0"),
                format!("-n {ns} link set dev eth0 up"),
                format!("link add mv3344556677881 type veth peer name eth1 address 02:55:66:77:88:01 netns {ns}"),
                format!("link set dev mv3344556677881 alias {mark} master br1 up"),
                format!("-n {ns} address add 10.124.0.2/16 dev eth1"),
                format!("-n {ns} link set dev eth1 up"),
                format!("-n {ns} route add default via 10.123.0.1 dev eth0"),
            ]
        );
        let without_gateway = launch(&[("10.123.0.2/24", None, "br0")]);
        let plan = netns_plan(ID, &attachments(&without_gateway).unwrap());
        assert!(plan.iter().all(|c| !c.contains(&"route".to_owned())), "{plan:?}");
    }

    #[test]
    fn another_instances_link_is_never_taken_nor_removed() {
        let name = tap_name(ID, 0);
        let twins = [link(&name, Some(mark(TWIN)))];
        let error = check_free(&twins, std::slice::from_ref(&name), ID).unwrap_err().to_string();
        assert!(error.starts_with("mt3344556677880 belongs to instance 9922334455667788"), "{error}");
        assert!(links_of(&twins, ID).is_empty());
        // Its own link (a start that died), marked or not, is reused and removed.
        for own in [link(&name, Some(mark(ID))), link(&name, None)] {
            assert!(check_free(std::slice::from_ref(&own), std::slice::from_ref(&name), ID).is_ok());
            assert_eq!(
                links_of(&[own, link("eth0", None), link("br0", Some("uplink".into()))], ID),
                std::slice::from_ref(&name)
            );
        }
    }

    #[test]
    fn the_sweep_removes_only_owned_instances_that_are_not_live() {
        let (ended, running, foreign) =
            (InstanceId::from_u64(0xa1), InstanceId::from_u64(0xb2), InstanceId::from_u64(0xc3));
        let owned = BTreeSet::from([ended, running]);
        let live = BTreeSet::from([running]);
        let namespaces = [netns_name(ended), netns_name(running), netns_name(foreign), "hello-net-k".into()];
        assert_eq!(leaked_namespaces(&namespaces, &owned, &live), [netns_name(ended)]);
        let links = [
            link(&tap_name(ended, 0), Some(mark(ended))),
            link(&tap_name(ended, 1), None),
            link(&tap_name(running, 0), Some(mark(running))),
            link(&veth_name(running, 1), None),
            link(&tap_name(foreign, 0), Some(mark(foreign))),
            link(&tap_name(foreign, 1), None),
            link("eth0", None),
        ];
        assert_eq!(leaked_links(&links, &owned, &live), [tap_name(ended, 0), tap_name(ended, 1)]);
        // An unmarked link whose tag a live instance shares is left: it may be that one's.
        let twin_live = BTreeSet::from([ID, TWIN]);
        let unmarked = [link(&tap_name(ID, 0), None)];
        assert!(leaked_links(&unmarked, &twin_live, &BTreeSet::from([TWIN])).is_empty());
    }

    #[test]
    fn ip_json_reads_names_and_aliases() {
        let json = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK"]},
                       {"ifindex":9,"ifname":"mt3344556677880","ifalias":"mirari instance 1122334455667788"}]"#;
        let links: Vec<Link> = serde_json::from_str(json).unwrap();
        assert_eq!(links[0].owner(), Owner::NotOurs);
        assert_eq!(links[1].owner(), Owner::Marked(ID));
    }
}
