//! Status conditions, computed from what was applied and observed. Pure.

use k8s_openapi::api::core::v1::Pod;

use crate::crd::Condition;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const LICENSED: &str = "Licensed";
pub const TENANT_READY: &str = "TenantReady";
pub const PARTNER_REACHABLE: &str = "PartnerReachable";

/// What the leading replica reports on its pod, in an annotation: the
/// tenant's answer to its sign-ins (Graph), or the partner edge's answer
/// to its probe (SIP federation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodReport {
    Accepted,
    /// `reason` is the gateway's CamelCase refusal (MfaRequired,
    /// PartnerRefusesDomain, …); `message` says what the administrator
    /// must change.
    Refused {
        reason: String,
        message: String,
    },
}

/// The pods' reports, each `None` until a replica has made it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reported {
    /// `xmppfed.io/tenant-sign-in`, for TenantReady.
    pub tenant: Option<PodReport>,
    /// `xmppfed.io/sip-partner`, for PartnerReachable.
    pub partner: Option<PodReport>,
}

impl Reported {
    /// Read from the gateway's pods.
    pub fn from_pods(pods: &[Pod]) -> Self {
        Self {
            tenant: pod_report(pods, xmppfed_config::POD_TENANT_ANNOTATION, "SignInRefused"),
            partner: pod_report(
                pods,
                xmppfed_config::POD_SIP_PARTNER_ANNOTATION,
                "PartnerRefused",
            ),
        }
    }

    /// Whether a report may change soon, so the operator should look again
    /// (pods are not watched): a refusal an administrator may fix, or, with
    /// `sip_running` (a SIP gateway with a ready pod), the partner's first
    /// answer, which is not part of pod readiness.
    pub fn awaited(&self, sip_running: bool) -> bool {
        let refused = [&self.tenant, &self.partner]
            .iter()
            .any(|r| matches!(r, Some(PodReport::Refused { .. })));
        refused || sip_running && self.partner.is_none()
    }
}

/// What the reconcile saw, from which the conditions follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Reconciliation is paused by `spec.paused`.
    Paused,
    /// The spec cannot be applied; `reason` is CamelCase, `message` says why.
    Invalid { reason: String, message: String },
    /// The objects were applied: `desired` licensed replicas of `asked`, `ready` of them ready;
    /// `waiting` names the pods not ready and why (see [`waiting_pods`]).
    Applied {
        asked: i32,
        desired: i32,
        ready: i32,
        updated: bool,
        waiting: Vec<String>,
        /// The replicas asked for that hold no licence seat, by pod name.
        unlicensed: Vec<String>,
        /// What the leading replica reported: the tenant's sign-ins, the
        /// SIP partner's answer.
        reported: Reported,
    },
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: String::new(),
        observed_generation: None,
    }
}

/// The conditions for `observed`. `previous` keeps each condition's transition
/// time when its status did not change; `now` stamps the others.
/// `licensed` is the Licensed condition's (status, reason, message), when licensing was evaluated.
pub fn conditions(
    observed: &Observed,
    licensed: Option<(bool, &str, &str)>,
    generation: Option<i64>,
    previous: &[Condition],
    now: &str,
) -> Vec<Condition> {
    let mut out = match observed {
        Observed::Paused => vec![
            condition(
                READY,
                false,
                "Paused",
                "reconciliation is paused by spec.paused".into(),
            ),
            condition(
                PROGRESSING,
                false,
                "Paused",
                "reconciliation is paused by spec.paused".into(),
            ),
            condition(DEGRADED, false, "Paused", String::new()),
        ],
        Observed::Invalid { reason, message } => vec![
            condition(READY, false, reason, message.clone()),
            condition(
                PROGRESSING,
                false,
                reason,
                "waiting for the spec or its policies to change".into(),
            ),
            condition(DEGRADED, true, reason, message.clone()),
        ],
        Observed::Applied {
            asked,
            desired,
            ready,
            updated,
            waiting,
            unlicensed,
            reported,
        } => rollout(*asked, *desired, *ready, *updated, waiting, unlicensed)
            .into_iter()
            .chain(reported.tenant.as_ref().map(tenant_ready))
            .chain(reported.partner.as_ref().map(partner_reachable))
            .collect(),
    };
    if let Some((ok, reason, message)) = licensed {
        out.push(condition(LICENSED, ok, reason, message.to_owned()));
    }
    for c in &mut out {
        c.observed_generation = generation;
        c.last_transition_time = previous
            .iter()
            .find(|p| p.type_ == c.type_ && p.status == c.status)
            .map_or_else(|| now.to_owned(), |p| p.last_transition_time.clone());
    }
    out
}

/// Progressing's reason once a rollout has not finished within its deadline.
pub const DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// A rollout still unfinished `deadline` after it began (Progressing turned
/// True, or the spec changed while it was) is stuck (a Deployment's `progressDeadlineSeconds`): Progressing turns False,
/// `ProgressDeadlineExceeded`, naming the pods and why they wait. It stays so
/// until the rollout finishes or the spec changes (a new generation).
pub fn progress_deadline(
    mut out: Vec<Condition>,
    previous: &[Condition],
    deadline: std::time::Duration,
    now: &str,
) -> Vec<Condition> {
    let Some(p) = out
        .iter_mut()
        .find(|c| c.type_ == PROGRESSING && c.status == "True" && c.reason == "RollingOut")
    else {
        return out;
    };
    let before = previous.iter().find(|c| c.type_ == PROGRESSING);
    // A new generation is a new rollout: its time starts now, even where
    // Progressing was already True for the one before.
    if before.is_some_and(|c| c.observed_generation != p.observed_generation) {
        p.last_transition_time = now.to_owned();
    }
    let stuck = before.filter(|c| {
        c.reason == DEADLINE_EXCEEDED && c.observed_generation == p.observed_generation
    });
    let elapsed = |since: &str| -> Option<std::time::Duration> {
        let (since, now) = (
            since.parse::<k8s_openapi::jiff::Timestamp>().ok()?,
            now.parse::<k8s_openapi::jiff::Timestamp>().ok()?,
        );
        std::time::Duration::try_from(now.duration_since(since)).ok()
    };
    let overdue = elapsed(&p.last_transition_time).is_some_and(|e| e >= deadline);
    if stuck.is_some() || overdue {
        p.status = "False".into();
        p.reason = DEADLINE_EXCEEDED.into();
        p.message = format!("no rollout within {} s: {}", deadline.as_secs(), p.message);
        p.last_transition_time =
            stuck.map_or_else(|| now.to_owned(), |s| s.last_transition_time.clone());
    }
    out
}

/// Ready, Progressing and Degraded once the children are applied. Ready
/// counts against the replicas asked for: an unlicensed one is a replica not
/// ready, and named. Progressing follows the licensed ones, which are all
/// that can roll out.
fn rollout(
    asked: i32,
    desired: i32,
    ready: i32,
    updated: bool,
    waiting: &[String],
    unlicensed: &[String],
) -> [Condition; 3] {
    let licensed_ready = ready >= desired;
    let mut ready_msg = format!("{ready}/{asked} gateway pods ready");
    if !licensed_ready && !waiting.is_empty() {
        ready_msg = format!("{ready_msg}; waiting for {}", waiting.join(", "));
    }
    if !unlicensed.is_empty() {
        ready_msg = format!(
            "{ready_msg}; unlicensed: {} (no licence seat: see the Licensed condition)",
            unlicensed.join(", ")
        );
    }
    [
        if desired == 0 && asked > 0 {
            condition(
                READY,
                false,
                "Unlicensed",
                "no replica holds a licence seat (see the Licensed condition)".into(),
            )
        } else if desired == 0 {
            condition(READY, false, "ScaledToZero", "spec.replicas is 0".into())
        } else if !licensed_ready {
            condition(READY, false, "ReplicasNotReady", ready_msg.clone())
        } else if desired < asked {
            condition(READY, false, "ReplicasUnlicensed", ready_msg.clone())
        } else {
            condition(READY, true, "AllReplicasReady", ready_msg.clone())
        },
        if updated || !licensed_ready {
            condition(PROGRESSING, true, "RollingOut", ready_msg)
        } else {
            condition(
                PROGRESSING,
                false,
                "UpToDate",
                "the applied configuration is running".into(),
            )
        },
        condition(DEGRADED, false, "Applied", String::new()),
    ]
}

fn tenant_ready(tenant: &PodReport) -> Condition {
    reported(
        TENANT_READY,
        (
            "SignInsAccepted",
            "the Microsoft 365 tenant accepts the gateway's sign-ins",
        ),
        tenant,
    )
}

fn partner_reachable(partner: &PodReport) -> Condition {
    reported(
        PARTNER_REACHABLE,
        (
            "PartnerAccepts",
            "the partner's SIP edge takes the gateway's probe",
        ),
        partner,
    )
}

/// Condition `type_` from a pod's report: True with `accepted`'s reason and
/// message, or False with the refusal's.
fn reported(type_: &str, (reason, message): (&str, &str), report: &PodReport) -> Condition {
    match report {
        PodReport::Accepted => condition(type_, true, reason, message.to_owned()),
        PodReport::Refused { reason, message } => condition(type_, false, reason, message.clone()),
    }
}

/// What the gateway's pods report under annotation `key`: the leader's
/// (`xmppfed.io/role=leader`) when it has reported, else a refusal any pod
/// reported (first by name), else `Accepted` if any pod reported `ok`.
/// A value not in the `Reason: message` form is a refusal with `fallback`'s reason.
pub fn pod_report(pods: &[Pod], key: &str, fallback: &str) -> Option<PodReport> {
    let reported = |p: &Pod| -> Option<PodReport> {
        let value = p.metadata.annotations.as_ref()?.get(key)?;
        Some(match value.split_once(": ") {
            _ if value == "ok" => PodReport::Accepted,
            Some((reason, message))
                if !reason.is_empty() && reason.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                PodReport::Refused {
                    reason: reason.to_owned(),
                    message: message.to_owned(),
                }
            }
            _ => PodReport::Refused {
                reason: fallback.to_owned(),
                message: value.clone(),
            },
        })
    };
    let is_leader = |p: &Pod| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(xmppfed_config::POD_ROLE_LABEL))
            .is_some_and(|r| r == "leader")
    };
    if let Some(leader) = pods.iter().filter(|p| is_leader(p)).find_map(reported) {
        return Some(leader);
    }
    let mut all: Vec<(&str, PodReport)> = pods
        .iter()
        .filter_map(|p| Some((p.metadata.name.as_deref().unwrap_or(""), reported(p)?)))
        .collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    all.iter()
        .find(|(_, t)| matches!(t, PodReport::Refused { .. }))
        .or_else(|| all.first())
        .map(|(_, t)| t.clone())
}

/// How many pods a Ready message names before it only counts the rest.
const NAMED_PODS: usize = 5;

/// The gateway's pods that are not Ready, each as "name (phase: why)", by name,
/// so that `kubectl wait --for=condition=Ready` failing says what to look at.
/// "Why" is the first of: a container waiting (ImagePullBackOff, CrashLoopBackOff…)
/// or terminated, the pod not scheduled (with the scheduler's reason), the pod's
/// own reason, or "not ready".
pub fn waiting_pods(pods: &[Pod]) -> Vec<String> {
    let mut waiting: Vec<(String, String)> = pods
        .iter()
        .filter(|p| !pod_ready(p))
        .map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            let status = p.status.as_ref();
            let phase = status
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".to_owned());
            (name, format!("{phase}: {}", why_not_ready(p)))
        })
        .collect();
    waiting.sort();
    let more = waiting.len().saturating_sub(NAMED_PODS);
    let mut out: Vec<String> = waiting
        .into_iter()
        .take(NAMED_PODS)
        .map(|(name, why)| format!("{name} ({why})"))
        .collect();
    if more > 0 {
        out.push(format!("{more} more"));
    }
    out
}

/// The last non-empty line of what a container or the kubelet said, at most
/// 200 characters (a condition message is read in `kubectl get`).
fn last_words(text: &str) -> Option<String> {
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    let mut out: String = line.chars().take(200).collect();
    if line.chars().count() > 200 {
        out.push('…');
    }
    Some(out)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn why_not_ready(pod: &Pod) -> String {
    let Some(status) = pod.status.as_ref() else {
        return "not scheduled to any node".to_owned();
    };
    for c in status.container_statuses.iter().flatten() {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or("waiting");
            // A crash loop says what the container last said; an image that
            // cannot be pulled, what the kubelet says about it.
            let said = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.message.as_deref())
                .or(w.message.as_deref())
                .and_then(last_words);
            return match said {
                Some(said) => format!("container {} {reason}: {said}", c.name),
                None => format!("container {} {reason}", c.name),
            };
        }
        if let Some(t) = c.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            return format!(
                "container {} exited {}{}",
                c.name,
                t.exit_code,
                t.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        let reason = c.reason.as_deref().unwrap_or("Unschedulable");
        return match c.message.as_deref() {
            Some(m) if !m.is_empty() => format!("not scheduled, {reason}: {m}"),
            _ => format!("not scheduled, {reason}"),
        };
    }
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_none()
    {
        return "not scheduled to any node".to_owned();
    }
    if status
        .container_statuses
        .as_ref()
        .is_some_and(|c| !c.is_empty())
    {
        return "running, readiness probe not passing".to_owned();
    }
    status
        .reason
        .clone()
        .unwrap_or_else(|| "not ready".to_owned())
}

/// The current time as Kubernetes writes it (RFC 3339, seconds).
pub fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

#[cfg(test)]
mod tests;

/// Status of a DomainWhitelist or ThrottlePolicy: which gateways it applies to.
pub fn policy_status(
    selected: Vec<String>,
    generation: Option<i64>,
    previous: &[Condition],
    now: &str,
) -> crate::crd::ResourceStatus {
    let mut ready = if selected.is_empty() {
        condition(
            READY,
            false,
            "NoGatewaySelected",
            "no FederationGateway in this namespace is selected".into(),
        )
    } else {
        condition(
            READY,
            true,
            "Selected",
            format!("applies to {}", selected.join(", ")),
        )
    };
    ready.observed_generation = generation;
    ready.last_transition_time = previous
        .iter()
        .find(|p| p.type_ == READY && p.status == ready.status)
        .map_or_else(|| now.to_owned(), |p| p.last_transition_time.clone());
    crate::crd::ResourceStatus {
        observed_generation: generation,
        conditions: vec![ready],
        selected_gateways: selected,
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn policy_status_lists_selected_gateways() {
        let s = policy_status(vec!["a".into(), "b".into()], Some(4), &[], "t1");
        assert_eq!(s.selected_gateways, ["a", "b"]);
        assert_eq!(s.conditions[0].status, "True");
        assert_eq!(s.conditions[0].message, "applies to a, b");
        assert_eq!(s.observed_generation, Some(4));
        let none = policy_status(vec![], Some(5), &s.conditions, "t2");
        assert_eq!(
            (
                none.conditions[0].status.as_str(),
                none.conditions[0].last_transition_time.as_str()
            ),
            ("False", "t2")
        );
    }
}
