//! The host's networks: which bridge carries which network (`--network service=br0`), checked
//! at start, and the subnet a host without coordinators allocates from
//! (`--network service=br0,subnet=10.88.0.0/24,gateway=10.88.0.1,range=10.88.0.200-10.88.0.250`;
//! keep that range apart from the cluster network's on the same bridge).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::str::FromStr;

use mirari_core::ids::InstanceId;
use mirari_core::network::{self, Interface, Ipv4Cidr, MacAddress, Network};

/// One `--network` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetwork {
    pub name: String,
    /// The Linux bridge instances' interfaces on this network join.
    pub bridge: String,
    /// For instances started without coordinators (`mirari run`): the network to allocate
    /// addresses from. Cluster instances get theirs from the registry.
    pub local: Option<Network>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--network `{text}`: {reason}")]
pub struct HostNetworkError {
    text: String,
    reason: String,
}

impl FromStr for HostNetwork {
    type Err = HostNetworkError;

    /// `NAME=BRIDGE[,subnet=CIDR][,gateway=IP][,range=FIRST-LAST]`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: String| HostNetworkError { text: text.to_owned(), reason };
        let mut parts = text.split(',');
        let (name, bridge) = parts
            .next()
            .and_then(|first| first.split_once('='))
            .ok_or_else(|| error("expected NAME=BRIDGE, e.g. service=br0".into()))?;
        network::check_name(name).map_err(|e| error(e.to_string()))?;
        if bridge.is_empty() || bridge.len() > 15 || bridge.contains(['/', ' ']) {
            return Err(error(format!("`{bridge}` is not an interface name (1 to 15 characters, no `/`)")));
        }
        let (mut subnet, mut gateway, mut range) = (None, None, None);
        let address =
            |value: &str| value.parse::<Ipv4Addr>().map_err(|_| error(format!("`{value}` is not an IPv4 address")));
        for option in parts {
            match option.split_once('=') {
                Some(("subnet", value)) => subnet = Some(value.parse::<Ipv4Cidr>().map_err(|e| error(e.to_string()))?),
                Some(("gateway", value)) => gateway = Some(address(value)?),
                Some(("range", value)) => {
                    let (first, last) =
                        value.split_once('-').ok_or_else(|| error(format!("range `{value}` is not FIRST-LAST")))?;
                    range = Some((address(first)?, address(last)?));
                }
                _ => {
                    return Err(error(format!(
                        "unknown option `{option}`: use subnet=CIDR, gateway=IP and range=FIRST-LAST"
                    )));
                }
            }
        }
        if (gateway.is_some() || range.is_some()) && subnet.is_none() {
            return Err(error("gateway= and range= need subnet=".into()));
        }
        let local = subnet.map(|subnet| Network { name: name.to_owned(), subnet, gateway, range, dns: vec![] });
        if let Some(local) = &local {
            local.validate().map_err(|e| error(e.to_string()))?;
        }
        Ok(Self { name: name.to_owned(), bridge: bridge.to_owned(), local })
    }
}

/// In the agent's config file a network is written as its flag is: `network = ["service=br0"]`.
impl<'de> serde::Deserialize<'de> for HostNetwork {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        mirari_core::config::deserialize_from_str(deserializer)
    }
}

/// Why a bridge cannot carry instances' interfaces, or `None` when it can: it exists, is a
/// bridge, and is up. Asks `ip` (not sysfs, which shows the namespace it was mounted in).
pub fn check_bridge(bridge: &str) -> Option<String> {
    let output = std::process::Command::new("ip").args(["-j", "-d", "link", "show", "dev", bridge]).output();
    match output {
        Err(error) => Some(format!("cannot run `ip` to look at bridge {bridge} ({error}): install iproute2")),
        Ok(output) if !output.status.success() => Some(format!("bridge {bridge} does not exist")),
        Ok(output) => bridge_problem(bridge, &String::from_utf8_lossy(&output.stdout)),
    }
}

/// What is wrong with `bridge`, from `ip -j -d link show dev BRIDGE`'s answer.
fn bridge_problem(bridge: &str, json: &str) -> Option<String> {
    let links: serde_json::Value = match serde_json::from_str(json) {
        Ok(links) => links,
        Err(error) => return Some(format!("cannot read what `ip` says of {bridge}: {error}")),
    };
    let link = &links[0];
    if link["linkinfo"]["info_kind"] != "bridge" {
        return Some(format!("{bridge} is not a bridge"));
    }
    let flags = link["flags"].as_array().into_iter().flatten();
    let up = flags.into_iter().any(|flag| flag == "UP");
    (!up).then(|| format!("bridge {bridge} is down"))
}

/// The networks whose bridges are usable, each with its bridge; those that are not are logged
/// with the reason and offered to nobody.
pub fn usable(networks: &[HostNetwork]) -> BTreeMap<String, HostNetwork> {
    let mut usable = BTreeMap::new();
    for network in networks {
        match check_bridge(&network.bridge) {
            None => {
                tracing::info!(network = %network.name, bridge = %network.bridge, "network available");
                usable.insert(network.name.clone(), network.clone());
            }
            Some(reason) => {
                tracing::error!(network = %network.name, %reason, "network not offered: {reason}");
            }
        }
    }
    usable
}

/// Interfaces for new local instances (`mirari run`): for each ID, one per network the app
/// lists, the lowest address of this host's subnet for that network that neither `held` (by
/// the host's live instances) nor an earlier ID of the same request has.
pub fn allocate_local(
    networks: &BTreeMap<String, HostNetwork>,
    wanted: &[String],
    ids: &[InstanceId],
    held: &BTreeSet<(String, Ipv4Addr)>,
) -> Result<Vec<Vec<Interface>>, String> {
    let mut pools = Vec::new();
    for name in wanted {
        let host_network = networks.get(name).ok_or_else(|| {
            format!("this agent carries no network `{name}`: start it with --network {name}=BRIDGE,subnet=CIDR")
        })?;
        let local = host_network.local.as_ref().ok_or_else(|| {
            format!(
                "network `{name}` has no subnet on this agent for instances run without coordinators: \
                 give it one with --network {name}={},subnet=CIDR",
                host_network.bridge
            )
        })?;
        let free = local.free_addresses(move |address| held.contains(&(name.clone(), address)));
        pools.push((local, free));
    }
    ids.iter()
        .map(|id| {
            pools
                .iter_mut()
                .enumerate()
                .map(|(index, (local, free))| {
                    let address = free.next().ok_or_else(|| format!("network `{}` has no free address", local.name))?;
                    Ok(local.interface(address, MacAddress::for_instance(*id, index as u8)))
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_and_without_a_local_subnet() {
        let plain: HostNetwork = "service=br0".parse().unwrap();
        assert_eq!((plain.name.as_str(), plain.bridge.as_str(), plain.local), ("service", "br0", None));
        let local: HostNetwork =
            "dev=mirari0,subnet=10.89.0.0/24,gateway=10.89.0.1,range=10.89.0.200-10.89.0.250".parse().unwrap();
        let subnet = local.local.unwrap();
        assert_eq!(
            (subnet.subnet.to_string(), subnet.gateway),
            ("10.89.0.0/24".into(), Some("10.89.0.1".parse().unwrap()))
        );
        assert_eq!(subnet.pool_size(), 51);
        let bad_flags = [
            "service",
            "Service=br0",
            "service=",
            "service=br0,mtu=9000",
            "service=br0,subnet=10.89.0.1/24",
            "s=b,gateway=10.0.0.1",
            "s=b,subnet=10.89.0.0/24,range=10.89.0.9",
            "s=b,subnet=10.89.0.0/24,range=10.90.0.1-10.90.0.9",
        ];
        for bad in bad_flags {
            let error = bad.parse::<HostNetwork>().unwrap_err();
            assert!(error.to_string().starts_with(&format!("--network `{bad}`")), "{error}");
        }
    }

    #[test]
    fn local_instances_get_the_free_addresses_of_the_host_subnet() {
        let networks: BTreeMap<String, HostNetwork> = ["dev=mirari0,subnet=10.89.0.0/29,gateway=10.89.0.1", "bare=br1"]
            .iter()
            .map(|f| f.parse::<HostNetwork>().unwrap())
            .map(|n| (n.name.clone(), n))
            .collect();
        let held: BTreeSet<(String, Ipv4Addr)> = [("dev".to_owned(), "10.89.0.3".parse().unwrap())].into();
        let ids = [1, 2, 3].map(InstanceId::from_u64);
        let given = allocate_local(&networks, &["dev".into()], &ids, &held).unwrap();
        let addresses: Vec<String> = given.iter().map(|i| i[0].address.to_string()).collect();
        assert_eq!(addresses, ["10.89.0.2/29", "10.89.0.4/29", "10.89.0.5/29"]);
        assert_eq!(given[1][0].mac, MacAddress::for_instance(ids[1], 0));
        let too_many = [1, 2, 3, 4, 5].map(InstanceId::from_u64);
        assert_eq!(
            allocate_local(&networks, &["dev".into()], &too_many, &held).unwrap_err(),
            "network `dev` has no free address"
        );
        assert!(allocate_local(&networks, &["bare".into()], &ids, &held).unwrap_err().contains("has no subnet"));
        assert!(allocate_local(&networks, &["other".into()], &ids, &held).unwrap_err().contains("carries no network"));
    }

    #[test]
    fn a_bridge_must_be_a_bridge_and_be_up() {
        let link = |kind: &str, flags: &str| {
            format!(r#"[{{"ifname":"x","flags":[{flags}],"linkinfo":{{"info_kind":"{kind}"}}}}]"#)
        };
        assert_eq!(bridge_problem("br0", &link("bridge", r#""BROADCAST","UP","LOWER_UP""#)), None);
        assert_eq!(bridge_problem("br1", &link("bridge", r#""BROADCAST""#)).as_deref(), Some("bridge br1 is down"));
        assert_eq!(bridge_problem("eth0", &link("veth", r#""UP""#)).as_deref(), Some("eth0 is not a bridge"));
        assert_eq!(check_bridge("br-missing").as_deref(), Some("bridge br-missing does not exist"));
    }
}
