//! Boot-argument templates: `[run] args` filled in per instance.
//!
//! An argument may hold placeholders in braces, filled when the instance is placed:
//!
//! | placeholder              | becomes                                   |
//! |--------------------------|-------------------------------------------|
//! | `{net.NAME.cidr}`        | the interface's address and prefix, `10.88.0.7/16` |
//! | `{net.NAME.ip}`          | the address alone, `10.88.0.7`            |
//! | `{net.NAME.prefix}`      | the prefix length, `16`                   |
//! | `{net.NAME.gateway}`     | the network's gateway (empty if it has none) |
//! | `{net.NAME.mac}`         | the interface's MAC, `02:55:66:77:88:00`  |
//! | `{instance.id}`          | the instance ID                           |
//! | `{instance.slot}`        | its slot in the deployment, `0`, `1`, …   |
//! | `{app.version}`          | the app's version label, `0.2.0`          |
//!
//! `NAME` is one of the app's `[[network]]` names. `{{` and `}}` stand for `{` and `}`. A
//! template is checked once, when the config is read (or an app version is registered), so
//! filling it cannot fail.

use std::fmt::Write as _;

use crate::ids::InstanceId;
use crate::network::Interface;

/// Where a template went wrong: which argument, the byte offset in it, and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("boot argument {arg} at byte {offset}: {message}")]
pub struct TemplateError {
    pub arg: usize,
    pub offset: usize,
    pub message: String,
    pub help: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NetField {
    Cidr,
    Ip,
    Prefix,
    Gateway,
    Mac,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Id,
    Slot,
    Version,
    Net(&'a str, NetField),
}

const HELP: &str = "placeholders are {net.NAME.cidr|ip|prefix|gateway|mac}, {instance.id}, {instance.slot} and {app.version}; \
                    write {{ and }} for literal braces";

fn pieces<'a>(arg: &'a str, networks: &[String]) -> Result<Vec<Piece<'a>>, (usize, String, String)> {
    let mut out = Vec::new();
    let mut rest = arg;
    let mut offset = 0;
    while !rest.is_empty() {
        let at = rest.find(['{', '}']).unwrap_or(rest.len());
        if at > 0 {
            out.push(Piece::Text(&rest[..at]));
        }
        let tail = &rest[at..];
        let consumed = if tail.is_empty() {
            0
        } else if tail.starts_with("{{") {
            out.push(Piece::Text("{"));
            2
        } else if tail.starts_with("}}") {
            out.push(Piece::Text("}"));
            2
        } else if tail.starts_with('}') {
            return Err((offset + at, "a `}` that closes nothing".into(), HELP.into()));
        } else {
            let end = tail.find('}').ok_or_else(|| (offset + at, "a `{` that is never closed".into(), HELP.into()))?;
            out.push(placeholder(&tail[1..end], networks).map_err(|(message, help)| (offset + at, message, help))?);
            end + 1
        };
        offset += at + consumed;
        rest = &tail[consumed..];
    }
    Ok(out)
}

fn placeholder<'a>(name: &'a str, networks: &[String]) -> Result<Piece<'a>, (String, String)> {
    match name {
        "instance.id" => return Ok(Piece::Id),
        "instance.slot" => return Ok(Piece::Slot),
        "app.version" => return Ok(Piece::Version),
        _ => {}
    }
    let unknown = || (format!("unknown placeholder `{{{name}}}`"), HELP.to_owned());
    let (network, field) = name.strip_prefix("net.").and_then(|rest| rest.rsplit_once('.')).ok_or_else(unknown)?;
    let field = match field {
        "cidr" => NetField::Cidr,
        "ip" => NetField::Ip,
        "prefix" => NetField::Prefix,
        "gateway" => NetField::Gateway,
        "mac" => NetField::Mac,
        _ => return Err(unknown()),
    };
    if !networks.iter().any(|n| n == network) {
        let help = if networks.is_empty() {
            format!("add a [[network]] table with name = \"{network}\"")
        } else {
            format!("the app's networks are: {}", networks.join(", "))
        };
        return Err((format!("`{{{name}}}` names network `{network}`, which the app does not list"), help));
    }
    Ok(Piece::Net(network, field))
}

/// Checks every argument's placeholders against the app's networks.
pub fn check(args: &[String], networks: &[String]) -> Result<(), TemplateError> {
    for (index, arg) in args.iter().enumerate() {
        pieces(arg, networks).map_err(|(offset, message, help)| TemplateError { arg: index, offset, message, help })?;
    }
    Ok(())
}

/// What an instance fills its templates with.
#[derive(Debug, Clone, Copy)]
pub struct InstanceContext<'a> {
    pub id: InstanceId,
    pub slot: u32,
    /// The app's version label.
    pub version: &'a str,
    /// In the app's network order; each names its network.
    pub interfaces: &'a [Interface],
}

/// Fills the templates. Arguments that do not check (never the case after [`check`]) and
/// networks without an interface are left as written.
pub fn render(args: &[String], instance: InstanceContext<'_>) -> Vec<String> {
    let networks: Vec<String> = instance.interfaces.iter().map(|i| i.network.clone()).collect();
    args.iter()
        .map(|arg| {
            let Ok(pieces) = pieces(arg, &networks) else { return arg.clone() };
            let mut out = String::with_capacity(arg.len());
            for piece in pieces {
                let _ = match piece {
                    Piece::Text(text) => write!(out, "{text}"),
                    Piece::Id => write!(out, "{}", instance.id),
                    Piece::Slot => write!(out, "{}", instance.slot),
                    Piece::Version => write!(out, "{}", instance.version),
                    Piece::Net(network, field) => {
                        let interface = instance.interfaces.iter().find(|i| i.network == network);
                        match (interface, field) {
                            (None, _) => Ok(()),
                            (Some(i), NetField::Cidr) => write!(out, "{}", i.address),
                            (Some(i), NetField::Ip) => write!(out, "{}", i.address.address),
                            (Some(i), NetField::Prefix) => write!(out, "{}", i.address.prefix),
                            (Some(i), NetField::Gateway) => match i.gateway {
                                Some(gateway) => write!(out, "{gateway}"),
                                None => Ok(()),
                            },
                            (Some(i), NetField::Mac) => write!(out, "{}", i.mac),
                        }
                    }
                };
            }
            out
        })
        .collect()
}

/// Whether any argument has a placeholder (so a spec with none is passed through as is).
pub fn has_placeholders(args: &[String]) -> bool {
    args.iter().any(|a| a.contains(['{', '}']))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::MacAddress;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn placeholders_are_filled_per_instance() {
        let id = InstanceId::from_u64(0xabcd);
        let interfaces = vec![Interface {
            network: "service".into(),
            address: "10.88.0.7/16".parse().unwrap(),
            gateway: Some("10.88.0.1".parse().unwrap()),
            mac: MacAddress::for_instance(id, 0),
        }];
        let args = strings(&[
            "--ipv4={net.service.cidr}",
            "--ipv4-gateway={net.service.gateway}",
            "ip={net.service.ip}/{net.service.prefix} mac={net.service.mac}",
            "id={instance.id} slot={instance.slot} {{literal}}",
            "version={app.version}",
        ]);
        check(&args, &strings(&["service"])).unwrap();
        let rendered = render(&args, InstanceContext { id, slot: 4, version: "0.2.0", interfaces: &interfaces });
        assert_eq!(
            rendered,
            strings(&[
                "--ipv4=10.88.0.7/16",
                "--ipv4-gateway=10.88.0.1",
                "ip=10.88.0.7/16 mac=02:00:00:ab:cd:00",
                "id=000000000000abcd slot=4 {literal}",
                "version=0.2.0",
            ])
        );
    }

    #[test]
    fn mistakes_are_located_with_a_hint() {
        let networks = strings(&["service"]);
        let error = check(&strings(&["ok", "--ipv4={net.sevrice.cidr}"]), &networks).unwrap_err();
        assert_eq!((error.arg, error.offset), (1, 7));
        assert!(error.message.contains("network `sevrice`") && error.help.contains("service"), "{error:?}");
        let error = check(&strings(&["{instance.name}"]), &networks).unwrap_err();
        assert!(error.message.contains("unknown placeholder `{instance.name}`"), "{error:?}");
        assert!(check(&strings(&["{net.service.cidr"]), &networks).unwrap_err().message.contains("never closed"));
        assert!(check(&strings(&["a}b"]), &networks).unwrap_err().message.contains("closes nothing"));
        assert!(check(&strings(&["{net.service.mtu}"]), &networks).is_err());
        let error = check(&strings(&["{net.x.ip}"]), &[]).unwrap_err();
        assert!(error.help.contains("[[network]]"), "{error:?}");
    }
}
