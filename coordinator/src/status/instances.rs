//! The cluster status's instance list: which instances it names, narrowed by app, host and
//! phase, a page at a time. A page goes on after the last ID of the one before (the registry
//! keeps instances by ID), so a listing read page by page names each instance once, and
//! every instance that stays throughout, however many are placed or stop meanwhile.

use std::num::NonZeroUsize;

use mirari_core::ids::{InstanceId, ParseInstanceIdError};
use mirari_core::instance::{ParsePhaseError, Phase};
use mirari_core::registry::{self, HostId, InstanceEntry, Registry};
use mirari_proto::coordinator as pb;

/// Instances per page when the request names no size.
pub(crate) const DEFAULT_PAGE_SIZE: NonZeroUsize = NonZeroUsize::new(1_000).unwrap();
/// The most instances a page holds, whatever the request asks: an answer stays a few MB.
pub(crate) const MAX_PAGE_SIZE: NonZeroUsize = NonZeroUsize::new(5_000).unwrap();

/// A status request that cannot be answered as asked.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("invalid `state` filter")]
    State(#[source] ParsePhaseError),
    #[error("invalid `page_token`: pass the previous answer's next_page_token, or none for the first page")]
    PageToken(#[source] ParseInstanceIdError),
    #[error("unknown status view {0}")]
    View(i32),
}

impl From<QueryError> for tonic::Status {
    fn from(error: QueryError) -> Self {
        tonic::Status::invalid_argument(mirari_core::errors::chain(&error))
    }
}

/// Which instances a listing names; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub app: Option<String>,
    pub host: Option<HostId>,
    pub phase: Option<Phase>,
}

impl Filter {
    fn matches(&self, instance: &InstanceEntry) -> bool {
        self.app.as_ref().is_none_or(|app| &instance.app == app)
            && self.host.as_ref().is_none_or(|host| &instance.host == host)
            && self.phase.is_none_or(|phase| instance.observed == phase)
    }
}

/// A status request, checked: what to answer with, and which instances from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub view: pb::StatusView,
    pub filter: Filter,
    /// The page goes on after this instance (`None`: the first page).
    pub after: Option<InstanceId>,
    pub page_size: NonZeroUsize,
}

impl TryFrom<&pb::StatusRequest> for Query {
    type Error = QueryError;

    fn try_from(request: &pb::StatusRequest) -> Result<Self, QueryError> {
        let view = pb::StatusView::try_from(request.view).map_err(|_| QueryError::View(request.view))?;
        let given = |text: &str| (!text.is_empty()).then(|| text.to_owned());
        let phase = given(&request.state).map(|name| name.parse()).transpose().map_err(QueryError::State)?;
        let after = given(&request.page_token).map(|token| token.parse()).transpose().map_err(QueryError::PageToken)?;
        let page_size = usize::try_from(request.page_size)
            .ok()
            .and_then(NonZeroUsize::new)
            .map_or(DEFAULT_PAGE_SIZE, |size| size.min(MAX_PAGE_SIZE));
        Ok(Query {
            view,
            filter: Filter { app: given(&request.app), host: given(&request.host).map(HostId), phase },
            after,
            page_size,
        })
    }
}

/// Whether the status names an instance: it holds its slot, or something of it may still run.
fn is_listed(instance: &InstanceEntry) -> bool {
    registry::holds_slot(instance) || instance.observed.is_live()
}

/// One page of a listing.
#[derive(Debug, PartialEq, Eq)]
pub struct Page<'a> {
    pub instances: Vec<&'a InstanceEntry>,
    /// Where the next page starts after; `None` when no more instances match.
    pub next: Option<InstanceId>,
    /// How many instances match in all, counted on the first page only (later pages would
    /// each walk the rest of the registry again to say it).
    pub matched: Option<u64>,
}

/// Up to `size` listed instances that match `filter`, by ID, after `after`. The work is in
/// proportion to the instances it walks past: those up to the page's end and on to the next
/// match (on the first page, to the end, to count them).
pub fn page<'a>(registry: &'a Registry, filter: &Filter, after: Option<InstanceId>, size: NonZeroUsize) -> Page<'a> {
    let mut matching = registry.instances_after(after).filter(|i| is_listed(i) && filter.matches(i));
    let instances: Vec<&InstanceEntry> = matching.by_ref().take(size.get()).collect();
    let (more, matched) = match after {
        None => {
            let rest = matching.count();
            (rest > 0, Some((instances.len() + rest) as u64))
        }
        Some(_) => (matching.next().is_some(), None),
    };
    let next = instances.last().map(|i| i.id).filter(|_| more);
    Page { instances, next, matched }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use mirari_core::registry::{Command, InstanceReport, Request};

    use super::*;
    use crate::status::tests::{HOSTS, grow, registry};

    fn query(request: pb::StatusRequest) -> Result<Query, QueryError> {
        Query::try_from(&request)
    }

    /// Every page from the first, with `between` applied to the registry before each next one.
    fn read_all(
        registry: &mut Registry,
        filter: &Filter,
        size: usize,
        mut between: impl FnMut(&mut Registry),
    ) -> (Vec<InstanceId>, Option<u64>) {
        let size = NonZeroUsize::new(size).unwrap();
        let (mut seen, mut after, mut matched) = (Vec::new(), None, None);
        loop {
            let page = page(registry, filter, after, size);
            assert!(page.instances.len() <= size.get());
            assert!(page.instances.iter().all(|i| filter.matches(i)), "only what matches");
            seen.extend(page.instances.iter().map(|i| i.id));
            if after.is_none() {
                matched = page.matched;
            } else {
                assert_eq!(page.matched, None, "counted on the first page only");
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return (seen, matched),
            }
            between(registry);
        }
    }

    fn listed_matching(registry: &Registry, filter: &Filter) -> Vec<InstanceId> {
        registry.instances().filter(|i| is_listed(i) && filter.matches(i)).map(|i| i.id).collect()
    }

    #[test]
    fn pages_put_together_are_the_filtered_instances_exactly() {
        let mut registry = registry();
        let filters = [
            Filter::default(),
            Filter { app: Some("web".into()), ..Default::default() },
            Filter { host: Some(HostId(HOSTS[1].into())), ..Default::default() },
            Filter { phase: Some(Phase::Failed), ..Default::default() },
            Filter { app: Some("api".into()), host: Some(HostId(HOSTS[2].into())), phase: Some(Phase::Running) },
            Filter { app: Some("nope".into()), ..Default::default() },
        ];
        for filter in &filters {
            let wanted = listed_matching(&registry, filter);
            for size in [1, 7, 100, wanted.len().max(1), 5_000] {
                let (seen, matched) = read_all(&mut registry, filter, size, |_| {});
                assert_eq!(seen, wanted, "{filter:?} in pages of {size}");
                assert_eq!(matched, Some(wanted.len() as u64));
            }
        }
        assert_eq!(listed_matching(&registry, &filters[0]).len(), 300);
        assert!(filters[..5].iter().all(|f| !listed_matching(&registry, f).is_empty()), "each filter matches some");
    }

    #[test]
    fn instances_that_come_and_go_between_pages_leave_no_gap_and_no_duplicate() {
        let mut registry = registry();
        let filter = Filter { app: Some("web".into()), ..Default::default() };
        let before: BTreeSet<InstanceId> = listed_matching(&registry, &filter).into_iter().collect();
        let mut stopped = BTreeSet::new();
        let mut round = 0;
        let (seen, _) = read_all(&mut registry, &filter, 16, |registry| {
            // New instances land before and after where the listing is, and an old one ends.
            round += 1;
            grow(registry, "web", 2);
            let victim = registry.instances().filter(|i| i.app == "web").nth(round * 3).unwrap().id;
            let index = registry.applied_index() + 1;
            let stop = Command::StopInstances { ids: vec![victim], reason: "test".into() };
            registry.apply(index, &Request { request_id: format!("stop-{index}"), command: stop }).unwrap();
            let report = InstanceReport {
                id: victim,
                phase: Phase::Stopped,
                restarts: 0,
                last_exit: None,
                message: String::new(),
                revision: index,
                assignments_index: index,
                health: Default::default(),
            };
            let host = registry.instance(victim).unwrap().host.clone();
            let command = Command::ReportInstances { host, reports: vec![report], at_ms: index };
            registry.apply(index + 1, &Request { request_id: format!("report-{index}"), command }).unwrap();
            stopped.insert(victim);
        });
        let unique: BTreeSet<InstanceId> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "no instance twice");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in ID order");
        let stayed: BTreeSet<InstanceId> = before.difference(&stopped).copied().collect();
        assert!(unique.is_superset(&stayed), "every instance there throughout is named");
        assert!(round > 5, "the listing took many pages ({round})");
        assert!(registry.instances().filter(|i| i.app == "web").count() > before.len(), "instances were added");
    }

    #[test]
    fn the_page_size_has_a_default_and_a_cap_and_a_bad_state_or_token_is_refused() {
        let asked = |page_size| query(pb::StatusRequest { page_size, ..Default::default() }).unwrap().page_size;
        assert_eq!(asked(0), DEFAULT_PAGE_SIZE);
        assert_eq!(asked(10), NonZeroUsize::new(10).unwrap());
        assert_eq!(asked(u32::MAX), MAX_PAGE_SIZE);
        let registry = registry();
        let first = page(&registry, &Filter::default(), None, asked(u32::MAX));
        assert_eq!(first.instances.len(), 300, "all fit under the cap");

        let full = query(pb::StatusRequest::default()).unwrap();
        assert_eq!((full.view, full.filter, full.after), (pb::StatusView::Full, Filter::default(), None));
        let filtered = query(pb::StatusRequest { state: "lost".into(), host: "h1".into(), ..Default::default() });
        let filter = filtered.unwrap().filter;
        assert_eq!((filter.phase, filter.host), (Some(Phase::Lost), Some(HostId("h1".into()))));

        let status =
            tonic::Status::from(query(pb::StatusRequest { state: "up".into(), ..Default::default() }).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "invalid `state` filter: unknown state `up`: expected one of pending, starting, running, stopping, exited, \
             stopped, failed, lost"
        );
        let token = query(pb::StatusRequest { page_token: "zz".into(), ..Default::default() }).unwrap_err();
        assert!(matches!(token, QueryError::PageToken(_)), "{token}");
        let view = query(pb::StatusRequest { view: 9, ..Default::default() }).unwrap_err();
        assert_eq!(tonic::Status::from(view).code(), tonic::Code::InvalidArgument);
    }
}
