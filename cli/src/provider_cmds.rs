//! `mirari cluster providers ...`: cloud accounts the scheduler puts instances in beside the
//! hosts (burst when they are full, or only there when a deployment says `--provider`).

use std::process::ExitCode;

use mirari_core::provider::{self, Provider, ProviderKind};
use mirari_core::registry::{Command, HostId, Request};
use mirari_proto::coordinator as pb;
use mirari_proto::log_codec;
use serde::Serialize;

use crate::coordinators::Coordinators;
use crate::deploy;
use crate::output::{self, Format, Table};

/// What `providers add` was given.
#[derive(Debug, clap::Args)]
pub struct ProviderArgs {
    /// The provider's kind: ec2
    #[arg(value_parser = ProviderKind::parse)]
    pub kind: ProviderKind,
    /// Its name in the cluster (lowercase letters, digits and `-`): deployments name it with
    /// --provider, and every machine carries it as its mirari:provider tag
    pub name: String,
    /// The region machines are launched in, e.g. us-east-1
    #[arg(long)]
    pub region: String,
    /// The API's URL, when not the region's public endpoint (a private endpoint, a stand-in)
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Most machines the provider may run at once, one per instance
    #[arg(long)]
    pub max_instances: u32,
    /// The machines' instance type, e.g. t3.micro; an instance must fit one
    #[arg(long)]
    pub instance_type: String,
    /// The subnet machines are launched in [default: the default subnet]
    #[arg(long)]
    pub subnet: Option<String>,
    /// Security groups of the machines (comma separated) [default: the default group]
    #[arg(long, value_delimiter = ',')]
    pub security_group: Vec<String>,
    /// A tag every machine carries besides Mirari's own, e.g. team=edge (repeatable)
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
    Ok((key.to_owned(), value.to_owned()))
}

impl ProviderArgs {
    fn provider(self) -> anyhow::Result<(String, Provider)> {
        let provider = Provider {
            kind: self.kind,
            region: self.region,
            endpoint: self.endpoint,
            instance_type: self.instance_type,
            max_instances: self.max_instances,
            subnet: self.subnet,
            security_groups: self.security_group,
            tags: self.tags.into_iter().collect(),
            condition: None,
        };
        // The registry refuses these too; saying so here names the flag without a round trip.
        provider::check_name(&self.name).map_err(anyhow::Error::msg)?;
        provider.validate().map_err(|why| anyhow::anyhow!("provider `{}`: {why}", self.name))?;
        Ok((self.name, provider))
    }
}

pub async fn add(coordinators: &mut Coordinators, args: ProviderArgs, format: Format) -> anyhow::Result<ExitCode> {
    let (name, provider) = args.provider()?;
    let summary = format!(
        "{} {}, up to {} {} machines",
        provider.kind.name(),
        provider.region,
        provider.max_instances,
        provider.instance_type
    );
    let command = Command::AddProvider { name: HostId(name.clone()), provider, at_ms: 0 };
    let what = format!("adding provider {name}");
    deploy::propose(coordinators, &what, Request { request_id: deploy::request_id("add-provider"), command }).await?;
    eprintln!("==> provider {name}: {summary}");
    list(coordinators, false, format).await
}

pub async fn remove(coordinators: &mut Coordinators, name: &str, format: Format) -> anyhow::Result<ExitCode> {
    let providers = read(coordinators, false).await?;
    anyhow::ensure!(
        providers.iter().any(|p| p.name == name),
        "{}",
        mirari_core::registry::Rejection::UnknownProvider(name.to_owned())
    );
    let command = Command::RemoveHost { host: HostId(name.to_owned()) };
    let what = format!("removing provider {name}");
    deploy::propose(coordinators, &what, Request { request_id: deploy::request_id("remove-provider"), command })
        .await?;
    eprintln!("==> removed provider {name}");
    list(coordinators, false, format).await
}

#[derive(Debug, Serialize)]
struct ProviderView {
    name: String,
    kind: String,
    region: String,
    endpoint: Option<String>,
    instance_type: String,
    max_instances: u32,
    subnet: Option<String>,
    security_groups: Vec<String>,
    tags: std::collections::BTreeMap<String, String>,
    status: String,
    /// Why it cannot launch now, as the leader last found.
    condition: Option<String>,
}

async fn read(coordinators: &mut Coordinators, stale: bool) -> anyhow::Result<Vec<ProviderView>> {
    let response = coordinators
        .call("listing providers", async |mut client| {
            Ok(client.list_hosts(pb::ReadRequest { stale }).await?.into_inner())
        })
        .await?;
    let mut views = Vec::new();
    for host in &response.hosts {
        let host = log_codec::host_from_pb(host)?;
        let status = deploy::host_state(&host).to_owned();
        let Some(provider) = host.provider else { continue };
        views.push(ProviderView {
            name: host.id.0,
            kind: provider.kind.name().to_owned(),
            region: provider.region,
            endpoint: provider.endpoint,
            instance_type: provider.instance_type,
            max_instances: provider.max_instances,
            subnet: provider.subnet,
            security_groups: provider.security_groups,
            tags: provider.tags,
            status,
            condition: provider.condition,
        });
    }
    Ok(views)
}

pub async fn list(coordinators: &mut Coordinators, stale: bool, format: Format) -> anyhow::Result<ExitCode> {
    let providers = read(coordinators, stale).await?;
    output::print(format, &providers, |providers| {
        let mut table = Table::new(&["PROVIDER", "KIND", "REGION", "TYPE", "MAX", "STATUS", "CONDITION", "ENDPOINT"]);
        for p in providers {
            table.row(vec![
                p.name.clone(),
                p.kind.clone(),
                p.region.clone(),
                p.instance_type.clone(),
                p.max_instances.to_string(),
                p.status.clone(),
                p.condition.clone().unwrap_or_else(|| "ok".into()),
                p.endpoint.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        table
    });
    Ok(ExitCode::SUCCESS)
}
