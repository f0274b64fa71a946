//! The builders as operators see them (the JSON API `/api/v1/builders`, the overview and
//! `/builders` pages, and `reconix builders list`): the local builder of the spec, then every
//! enrolled agent, each with its state, its offer as the spec caps it and the builds running on
//! it.
//!
//! Built from the typed rows of `reconix-status` ([`AgentRow`], [`RunningBuild`]) with the
//! spec's rules: liveness is [`Builders::liveness`] and an agent's offer is
//! [`Builders::agent_offer`], the very rules the `builders` loop and placement use.

use std::collections::BTreeMap;
use std::fmt;

use reconix_spec::{BuilderName, Builders, Timestamp};
use reconix_status::{AgentRow, BuilderKind, RunningBuild};
use serde::{Deserialize, Serialize};

/// Whether a builder takes builds, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuilderState {
    /// It takes builds: the local builder with slots, or a connected agent heard from within
    /// `heartbeat-timeout`.
    Ready,
    /// The local builder with `max-jobs: 0`.
    Disabled,
    /// A connected agent whose last heartbeat (or connection, before its first heartbeat) is
    /// older than `heartbeat-timeout`.
    Unresponsive,
    /// An enrolled agent that is not connected.
    Disconnected,
    /// An agent whose name was revoked: refused, whatever key or token it presents, until an
    /// operator admits it again.
    Revoked,
    /// An agent admitted again by an operator after a revocation, whose enrolled key is still
    /// the revoked one: it must enrol with a new key and the token.
    Admitted,
}

impl BuilderState {
    /// Returns its JSON spelling, e.g. `unresponsive`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Disabled => "disabled",
            Self::Unresponsive => "unresponsive",
            Self::Disconnected => "disconnected",
            Self::Revoked => "revoked",
            Self::Admitted => "admitted",
        }
    }
}

impl fmt::Display for BuilderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One builder as the JSON API and the CLI show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuilderView {
    /// `local` or the agent's name.
    pub name: String,
    /// Local machine or agent.
    pub kind: BuilderKind,
    /// Whether it takes builds.
    pub state: BuilderState,
    /// The systems it is used for (an agent's offer capped by its `builders.remote` entry).
    pub systems: Vec<String>,
    /// The features it is used for (capped likewise).
    pub features: Vec<String>,
    /// How many builds run on it at once at most (capped likewise).
    pub max_jobs: u32,
    /// How many builds are `running` on it.
    pub running: u32,
    /// `running / max_jobs`; 0 when `max_jobs` is 0.
    pub load: f64,
    /// The builds `running` on it, oldest first.
    pub running_builds: Vec<RunningBuild>,
    /// An agent's last heartbeat.
    pub last_heartbeat_at: Option<Timestamp>,
    /// When an agent's current connection was made; `None` while disconnected (and for local).
    pub connected_at: Option<Timestamp>,
    /// When an agent's name was revoked, while it is.
    pub revoked_at: Option<Timestamp>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// When an operator last admitted it again after a revocation.
    pub admitted_at: Option<Timestamp>,
    /// Who admitted it.
    pub admitted_by: Option<String>,
    /// An agent's key fingerprint; `None` for local.
    pub key_fingerprint: Option<String>,
}

/// Returns the builders as operators see them: the local builder of the spec, then every
/// enrolled agent by name, each with its state at `now`, its offer capped by the spec and the
/// builds `running` on it (from [`reconix_status::StatusDb::running_builds`]). Running builds on a builder that
/// is neither local nor enrolled are not shown.
pub fn builder_views(
    spec_builders: &Builders,
    mut agents: Vec<AgentRow>,
    mut running: BTreeMap<String, Vec<RunningBuild>>,
    now: Timestamp,
) -> Vec<BuilderView> {
    let load = |running: u32, max_jobs: u32| {
        if max_jobs == 0 {
            0.0
        } else {
            f64::from(running) / f64::from(max_jobs)
        }
    };
    let count = |builds: &[RunningBuild]| u32::try_from(builds.len()).unwrap_or(u32::MAX);
    let local = &spec_builders.local;
    let local_builds = running.remove(BuilderName::LOCAL).unwrap_or_default();
    let local_running = count(&local_builds);
    let mut out = vec![BuilderView {
        name: BuilderName::LOCAL.to_owned(),
        kind: BuilderKind::Local,
        state: if local.max_jobs == 0 {
            BuilderState::Disabled
        } else {
            BuilderState::Ready
        },
        systems: local.systems.iter().map(ToString::to_string).collect(),
        features: local.features.clone(),
        max_jobs: local.max_jobs,
        running: local_running,
        load: load(local_running, local.max_jobs),
        running_builds: local_builds,
        last_heartbeat_at: None,
        connected_at: None,
        revoked_at: None,
        revoked_by: None,
        admitted_at: None,
        admitted_by: None,
        key_fingerprint: None,
    }];
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    for agent in agents {
        let state = match (agent.revoked_at, agent.key_revoked, agent.connected_at) {
            (Some(_), _, _) => BuilderState::Revoked,
            (None, true, _) => BuilderState::Admitted,
            (None, false, None) => BuilderState::Disconnected,
            (None, false, Some(_)) => {
                if spec_builders.liveness(now, agent.last_seen()).is_alive() {
                    BuilderState::Ready
                } else {
                    BuilderState::Unresponsive
                }
            }
        };
        let offer = spec_builders.agent_offer(&agent.name, agent.offer);
        let builds = running.remove(agent.name.as_str()).unwrap_or_default();
        let n = count(&builds);
        out.push(BuilderView {
            state,
            kind: BuilderKind::Agent,
            systems: offer.systems.iter().map(ToString::to_string).collect(),
            features: offer.features,
            max_jobs: offer.max_jobs,
            running: n,
            load: load(n, offer.max_jobs),
            running_builds: builds,
            last_heartbeat_at: agent.last_heartbeat_at,
            connected_at: agent.connected_at,
            revoked_at: agent.revoked_at,
            revoked_by: agent.revoked_by,
            admitted_at: agent.admitted_at,
            admitted_by: agent.admitted_by,
            key_fingerprint: Some(agent.key_fingerprint),
            name: agent.name.into_string(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use reconix_spec::{Offer, RemoteBuilder, StorePath, System};

    use super::*;

    /// An arbitrary start time.
    const T0: Timestamp = Timestamp(1_700_000_000_000);

    /// Returns `T0` moved forward by `ms` milliseconds.
    fn at(ms: i64) -> Timestamp {
        Timestamp(T0.0 + ms)
    }

    fn drv(n: u64) -> StorePath {
        StorePath::new(format!("/nix/store/{n:0>32}-job{n}.drv")).unwrap()
    }

    const TIMEOUT: i64 = 30;

    fn builders() -> Builders {
        Builders {
            heartbeat_timeout: Duration::from_secs(TIMEOUT.unsigned_abs()).into(),
            ..Builders::default()
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn agent(name: &str) -> AgentRow {
        AgentRow {
            name: BuilderName::new(name).unwrap(),
            key_fingerprint: format!("SHA256:{name}"),
            offer: Offer {
                systems: vec![
                    System::new("aarch64-linux").unwrap(),
                    System::x86_64_linux(),
                ],
                features: strings(&["kvm", "big-parallel"]),
                max_jobs: 4,
            },
            enrolled_at: T0,
            revoked_at: None,
            connected_at: Some(T0),
            last_heartbeat_at: Some(at(10_000)),
            running: 0,
            revoked_by: None,
            admitted_at: None,
            admitted_by: None,
            key_revoked: false,
        }
    }

    fn running_build(n: u64) -> RunningBuild {
        RunningBuild {
            drv_path: drv(n),
            started_at: Some(T0),
            attempts: 1,
            jobs: Vec::new(),
        }
    }

    fn view<'v>(views: &'v [BuilderView], name: &str) -> &'v BuilderView {
        views.iter().find(|v| v.name == name).unwrap()
    }

    #[test]
    fn the_local_builder_should_come_first_with_the_spec_offer_and_its_builds() {
        let running = BTreeMap::from([(
            "local".to_owned(),
            vec![running_build(1), running_build(2), running_build(3)],
        )]);
        let views = builder_views(&builders(), vec![agent("b"), agent("a")], running, T0);
        let names: Vec<_> = views.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["local", "a", "b"]);
        let local = &views[0];
        assert_eq!(
            (local.kind, local.state, local.max_jobs, local.running),
            (BuilderKind::Local, BuilderState::Ready, 2, 3)
        );
        assert!((local.load - 1.5).abs() < f64::EPSILON);
        assert_eq!(local.systems, ["x86_64-linux"]);
        assert_eq!(local.running_builds.len(), 3);
        assert_eq!(
            (local.key_fingerprint.as_deref(), local.connected_at),
            (None, None)
        );
    }

    #[test]
    fn a_local_builder_without_slots_should_be_disabled_with_no_load() {
        let mut spec = builders();
        spec.local.max_jobs = 0;
        let views = builder_views(&spec, Vec::new(), BTreeMap::new(), T0);
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].state, BuilderState::Disabled);
        assert!(views[0].load.abs() < f64::EPSILON);
    }

    #[test]
    fn an_agent_heard_from_within_the_timeout_should_be_ready() {
        // The last millisecond before the timeout: at exactly the timeout it is silent, as
        // for the `builders` loop (`Builders::liveness`).
        let now = at(10_000 + TIMEOUT * 1000 - 1);
        let views = builder_views(&builders(), vec![agent("a")], BTreeMap::new(), now);
        let a = view(&views, "a");
        assert_eq!((a.kind, a.state), (BuilderKind::Agent, BuilderState::Ready));
        assert_eq!(a.key_fingerprint.as_deref(), Some("SHA256:a"));
        assert_eq!(a.last_heartbeat_at, Some(at(10_000)));
    }

    #[test]
    fn an_agent_silent_past_the_timeout_should_be_unresponsive() {
        let now = at(10_001 + TIMEOUT * 1000);
        let views = builder_views(&builders(), vec![agent("a")], BTreeMap::new(), now);
        assert_eq!(view(&views, "a").state, BuilderState::Unresponsive);
    }

    #[test]
    fn an_agent_without_heartbeat_should_be_judged_by_its_connection_time() {
        let mut fresh = agent("a");
        fresh.last_heartbeat_at = None;
        fresh.connected_at = Some(at(50_000));
        // A heartbeat from an earlier connection does not make it unresponsive either.
        let mut reconnected = agent("b");
        reconnected.last_heartbeat_at = Some(T0);
        reconnected.connected_at = Some(at(50_000));
        let mut stale = agent("c");
        stale.last_heartbeat_at = None;
        let views = builder_views(
            &builders(),
            vec![fresh, reconnected, stale],
            BTreeMap::new(),
            at(60_000),
        );
        assert_eq!(view(&views, "a").state, BuilderState::Ready);
        assert_eq!(view(&views, "b").state, BuilderState::Ready);
        assert_eq!(view(&views, "c").state, BuilderState::Unresponsive);
    }

    #[test]
    fn disconnected_and_revoked_agents_should_say_so() {
        let mut gone = agent("a");
        gone.connected_at = None;
        let mut revoked = agent("b");
        revoked.revoked_at = Some(at(1));
        let views = builder_views(&builders(), vec![gone, revoked], BTreeMap::new(), at(1));
        assert_eq!(view(&views, "a").state, BuilderState::Disconnected);
        let b = view(&views, "b");
        assert_eq!(
            (b.state, b.revoked_at),
            (BuilderState::Revoked, Some(at(1)))
        );
    }

    #[test]
    fn an_admitted_agent_with_its_revoked_key_should_be_admitted_until_it_enrols_anew() {
        let mut waiting = agent("a");
        waiting.key_revoked = true;
        waiting.connected_at = None;
        waiting.admitted_at = Some(at(5));
        waiting.admitted_by = Some("alice".to_owned());
        let mut back = agent("b");
        back.admitted_at = Some(at(5));
        let views = builder_views(
            &builders(),
            vec![waiting, back],
            BTreeMap::new(),
            at(10_000),
        );
        let a = view(&views, "a");
        assert_eq!(
            (a.state, a.admitted_at, a.admitted_by.as_deref()),
            (BuilderState::Admitted, Some(at(5)), Some("alice"))
        );
        assert_eq!(view(&views, "b").state, BuilderState::Ready);
    }

    #[test]
    fn a_remote_entry_should_cap_an_agents_offer_and_load() {
        let mut spec = builders();
        spec.remote.insert(
            BuilderName::new("a").unwrap(),
            RemoteBuilder {
                systems: vec![System::new("aarch64-linux").unwrap()],
                features: strings(&["big-parallel", "nixos-test"]),
                max_jobs: 2,
            },
        );
        let running = BTreeMap::from([
            ("a".to_owned(), vec![running_build(1)]),
            ("b".to_owned(), vec![running_build(2)]),
        ]);
        let views = builder_views(&spec, vec![agent("a"), agent("b")], running, at(10_000));
        let a = view(&views, "a");
        assert_eq!(a.systems, ["aarch64-linux"]);
        assert_eq!(a.features, ["big-parallel"]);
        assert_eq!((a.max_jobs, a.running), (2, 1));
        assert!((a.load - 0.5).abs() < f64::EPSILON);
        // Without an entry, the agent's own offer.
        let b = view(&views, "b");
        assert_eq!(b.systems, ["aarch64-linux", "x86_64-linux"]);
        assert_eq!(b.features, ["kvm", "big-parallel"]);
        assert_eq!(b.max_jobs, 4);
        assert!((b.load - 0.25).abs() < f64::EPSILON);
        // A drained agent has no load.
        spec.remote
            .get_mut(&BuilderName::new("a").unwrap())
            .unwrap()
            .max_jobs = 0;
        let views = builder_views(&spec, vec![agent("a")], BTreeMap::new(), at(10_000));
        assert_eq!(view(&views, "a").max_jobs, 0);
        assert!(view(&views, "a").load.abs() < f64::EPSILON);
    }

    #[test]
    fn the_json_should_use_snake_case_fields_and_kebab_case_values() {
        let views = builder_views(&builders(), vec![agent("a")], BTreeMap::new(), at(10_000));
        let json = serde_json::to_value(&views).unwrap();
        assert_eq!(json[0]["kind"], "local");
        assert_eq!(json[1]["state"], "ready");
        for field in [
            "name",
            "connected_at",
            "last_heartbeat_at",
            "revoked_at",
            "revoked_by",
            "admitted_at",
            "admitted_by",
            "key_fingerprint",
            "running_builds",
            "max_jobs",
        ] {
            assert!(json[1].get(field).is_some(), "{field} missing: {json}");
        }
        for state in [
            BuilderState::Ready,
            BuilderState::Disabled,
            BuilderState::Unresponsive,
            BuilderState::Disconnected,
            BuilderState::Revoked,
            BuilderState::Admitted,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        for kind in [BuilderKind::Local, BuilderKind::Agent] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.to_string());
        }
        let back: Vec<BuilderView> = serde_json::from_value(json).unwrap();
        assert_eq!(back, views);
    }
}
