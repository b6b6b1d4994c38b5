//! Networks and instance interfaces: subnets, address pools, MAC addresses.
//!
//! A [`Network`] is declared once by an operator (name, IPv4 subnet, gateway, the range kept for
//! instances, DNS servers) and kept in the registry; hosts say which of their bridges carries
//! it. Every interface of an instance gets an address from the network's pool and a MAC derived
//! from the instance ID, fixed when it is placed. Pure: the pool is asked for its free addresses,
//! lowest first, given which ones are held; who holds what is the registry's (or, on one host without
//! coordinators, the agent's) to know.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::InstanceId;

/// An IPv4 address with a prefix length: `10.88.0.0/16` (a subnet) or `10.88.0.7/16` (an
/// interface address in its subnet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    pub address: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn new(address: Ipv4Addr, prefix: u8) -> Result<Self, NetworkError> {
        if prefix > 32 {
            return Err(NetworkError::Invalid(format!("prefix /{prefix} is longer than 32 bits")));
        }
        Ok(Self { address, prefix })
    }

    fn mask(self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) }
    }

    /// The subnet's own address (host bits zero).
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) & self.mask())
    }

    /// The broadcast address (host bits one).
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) | !self.mask())
    }

    pub fn contains(self, address: Ipv4Addr) -> bool {
        u32::from(address) & self.mask() == u32::from(self.network())
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid =
            || NetworkError::Invalid(format!("`{text}` is not an IPv4 address with a prefix, e.g. 10.88.0.0/16"));
        let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        Self::new(address, prefix)
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = NetworkError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(cidr: Ipv4Cidr) -> String {
        cidr.to_string()
    }
}

/// A network an operator declared: `mirari cluster network create service --subnet
/// 10.88.0.0/16 --gateway 10.88.0.1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    /// The subnet, written with its network address (`10.88.0.0/16`).
    pub subnet: Ipv4Cidr,
    pub gateway: Option<Ipv4Addr>,
    /// The addresses instances get, first to last inclusive; the whole subnet (but its network,
    /// broadcast and gateway addresses) when absent.
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    pub dns: Vec<Ipv4Addr>,
}

/// The longest network name (it ends up in interface and namespace names' neighbours, flags,
/// config keys).
pub const MAX_NETWORK_NAME_BYTES: usize = 32;

impl Network {
    /// Checks that the parts agree: a subnet written with its network address, a gateway and
    /// range inside it, a usable pool.
    pub fn validate(&self) -> Result<(), NetworkError> {
        check_name(&self.name)?;
        let subnet = self.subnet;
        if subnet.prefix > 30 {
            return Err(NetworkError::Invalid(format!(
                "subnet {subnet} leaves no room for instances: use /30 or shorter"
            )));
        }
        if subnet.address != subnet.network() {
            return Err(NetworkError::Invalid(format!(
                "subnet {subnet} has host bits set: write it as {}/{}",
                subnet.network(),
                subnet.prefix
            )));
        }
        if let Some(gateway) = self.gateway
            && !self.is_host_address(gateway)
        {
            return Err(NetworkError::Invalid(format!("gateway {gateway} is not a host address of {subnet}")));
        }
        if let Some((first, last)) = self.range
            && (!self.is_host_address(first) || !self.is_host_address(last) || first > last)
        {
            return Err(NetworkError::Invalid(format!(
                "range {first}-{last} is not an ascending range of host addresses of {subnet}"
            )));
        }
        if self.dns.len() > 8 {
            return Err(NetworkError::Invalid(format!("{} DNS servers given, at most 8", self.dns.len())));
        }
        Ok(())
    }

    fn is_host_address(&self, address: Ipv4Addr) -> bool {
        self.subnet.contains(address) && address != self.subnet.network() && address != self.subnet.broadcast()
    }

    /// The first and last address of the pool.
    fn bounds(&self) -> (u32, u32) {
        match self.range {
            Some((first, last)) => (u32::from(first), u32::from(last)),
            None => (u32::from(self.subnet.network()) + 1, u32::from(self.subnet.broadcast()) - 1),
        }
    }

    /// Whether instances may be given `address`.
    pub fn in_pool(&self, address: Ipv4Addr) -> bool {
        let (first, last) = self.bounds();
        (first..=last).contains(&u32::from(address)) && self.is_host_address(address) && Some(address) != self.gateway
    }

    /// How many addresses the pool has.
    pub fn pool_size(&self) -> u64 {
        let (first, last) = self.bounds();
        let gateway_inside = self.gateway.is_some_and(|g| (first..=last).contains(&u32::from(g)));
        u64::from(last - first) + 1 - u64::from(gateway_inside)
    }

    /// The pool's addresses that `held` does not claim, lowest first, lazily: a caller that
    /// takes several (a plan placing many instances) keeps one iterator and so never scans
    /// the held addresses twice. `held` answers for addresses already taken.
    pub fn free_addresses<'a>(&'a self, held: impl Fn(Ipv4Addr) -> bool + 'a) -> impl Iterator<Item = Ipv4Addr> + 'a {
        self.free_addresses_from(None, held)
    }

    /// The pool's addresses not `held`, from `start` (when it is in the pool) to the pool's end,
    /// then from its beginning: given out round the pool, an address released a moment ago is
    /// the last to be given again (clients' ARP caches and connections still remember it).
    pub fn free_addresses_from<'a>(
        &'a self,
        start: Option<Ipv4Addr>,
        held: impl Fn(Ipv4Addr) -> bool + 'a,
    ) -> impl Iterator<Item = Ipv4Addr> + 'a {
        let (first, last) = self.bounds();
        let start = start.filter(|a| self.in_pool(*a)).map_or(first, u32::from);
        (start..=last)
            .chain(first..start)
            .map(Ipv4Addr::from)
            .filter(move |&address| self.in_pool(address) && !held(address))
    }

    /// The interface an instance gets on this network with `address`.
    pub fn interface(&self, address: Ipv4Addr, mac: MacAddress) -> Interface {
        Interface {
            network: self.name.clone(),
            address: Ipv4Cidr { address, prefix: self.subnet.prefix },
            gateway: self.gateway,
            mac,
        }
    }
}

/// 1 to `max` lowercase letters, digits and `-`, starting with a letter: the names of networks
/// and providers.
pub(crate) fn is_lowercase_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Network names: 1 to 32 lowercase letters, digits and `-`, starting with a letter.
pub fn check_name(name: &str) -> Result<(), NetworkError> {
    if is_lowercase_name(name, MAX_NETWORK_NAME_BYTES) {
        Ok(())
    } else {
        Err(NetworkError::Invalid(format!(
            "invalid network name `{name}`: use 1 to {MAX_NETWORK_NAME_BYTES} lowercase letters, digits and `-`, starting with a letter"
        )))
    }
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// The MAC of interface `index` of instance `id`: locally administered, unicast (`02:`),
    /// then the instance ID's low 32 bits and the interface index. Two interfaces of live
    /// instances on one segment collide only if their IDs agree in 32 bits.
    pub fn for_instance(id: InstanceId, index: u8) -> Self {
        let [a, b, c, d] = (id.as_u64() as u32).to_be_bytes();
        Self([0x02, a, b, c, d, index])
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddress {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || NetworkError::Invalid(format!("`{text}` is not a MAC address such as 02:00:00:00:00:01"));
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(invalid)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(Self(bytes))
    }
}

impl TryFrom<String> for MacAddress {
    type Error = NetworkError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<MacAddress> for String {
    fn from(mac: MacAddress) -> String {
        mac.to_string()
    }
}

/// One network interface of an instance, as placed: which network, its address (with the
/// subnet's prefix), the gateway, its MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub network: String,
    pub address: Ipv4Cidr,
    pub gateway: Option<Ipv4Addr>,
    pub mac: MacAddress,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(subnet: &str, gateway: Option<&str>, range: Option<(&str, &str)>) -> Network {
        Network {
            name: "service".into(),
            subnet: subnet.parse().unwrap(),
            gateway: gateway.map(|g| g.parse().unwrap()),
            range: range.map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())),
            dns: vec![],
        }
    }

    #[test]
    fn cidrs_parse_and_know_their_subnet() {
        let cidr: Ipv4Cidr = "10.88.3.7/16".parse().unwrap();
        assert_eq!(
            (cidr.network(), cidr.broadcast()),
            ("10.88.0.0".parse().unwrap(), "10.88.255.255".parse().unwrap())
        );
        assert!(cidr.contains("10.88.200.1".parse().unwrap()) && !cidr.contains("10.89.0.1".parse().unwrap()));
        assert_eq!(cidr.to_string(), "10.88.3.7/16");
        for bad in ["10.88.0.0", "10.88.0.0/33", "10.88.0/16", "x/8"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_network_is_checked_whole() {
        assert!(network("10.88.0.0/16", Some("10.88.0.1"), None).validate().is_ok());
        let errors = [
            network("10.88.0.1/16", None, None),
            network("10.88.0.0/16", Some("10.89.0.1"), None),
            network("10.88.0.0/16", Some("10.88.255.255"), None),
            network("10.88.0.0/24", None, Some(("10.88.0.20", "10.88.0.10"))),
            network("10.88.0.0/31", None, None),
        ];
        for bad in errors {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(network("10.88.0.0/16", None, None).validate().is_ok());
        assert!(check_name("Service").is_err() && check_name("1net").is_err() && check_name("svc-2").is_ok());
    }

    #[test]
    fn the_pool_skips_network_broadcast_gateway_and_held_addresses() {
        let net = network("10.88.0.0/29", Some("10.88.0.1"), None);
        assert_eq!(net.pool_size(), 5); // .2 to .6
        let held = ["10.88.0.2", "10.88.0.3"].map(|a| a.parse::<Ipv4Addr>().unwrap());
        let free: Vec<Ipv4Addr> = net.free_addresses(|a| held.contains(&a)).collect();
        assert_eq!(free, ["10.88.0.4", "10.88.0.5", "10.88.0.6"].map(|a| a.parse::<Ipv4Addr>().unwrap()));
        assert_eq!(net.free_addresses(|_| true).next(), None);
        let ranged = network("10.88.0.0/24", Some("10.88.0.1"), Some(("10.88.0.100", "10.88.0.101")));
        assert_eq!(ranged.pool_size(), 2);
        assert!(!ranged.in_pool("10.88.0.99".parse().unwrap()) && ranged.in_pool("10.88.0.101".parse().unwrap()));
    }

    #[test]
    fn macs_come_from_the_instance_id_and_round_trip() {
        let mac = MacAddress::for_instance(InstanceId::from_u64(0x1122_3344_5566_7788), 1);
        assert_eq!(mac.to_string(), "02:55:66:77:88:01");
        assert_eq!(mac.to_string().parse::<MacAddress>().unwrap(), mac);
        assert!("02:55:66:77:88".parse::<MacAddress>().is_err());
    }
}
