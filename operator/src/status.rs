//! Status conditions, computed from what was applied and observed. Pure.

use crate::crd::Condition;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const LICENSED: &str = "Licensed";

/// What the reconcile saw, from which the conditions follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Reconciliation is paused by `spec.paused`.
    Paused,
    /// The spec cannot be applied; `reason` is CamelCase, `message` says why.
    Invalid { reason: String, message: String },
    /// The objects were applied: `desired` licensed replicas of `asked`, `ready` of them ready.
    Applied {
        asked: i32,
        desired: i32,
        ready: i32,
        updated: bool,
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
        } => {
            let all_ready = ready >= desired;
            let ready_msg = format!("{ready}/{desired} gateway pods ready");
            vec![
                if *desired == 0 && *asked > 0 {
                    condition(
                        READY,
                        false,
                        "Unlicensed",
                        "no replica holds a licence seat (see the Licensed condition)".into(),
                    )
                } else if *desired == 0 {
                    condition(READY, false, "ScaledToZero", "spec.replicas is 0".into())
                } else if all_ready {
                    condition(READY, true, "AllReplicasReady", ready_msg.clone())
                } else {
                    condition(READY, false, "ReplicasNotReady", ready_msg.clone())
                },
                if *updated || !all_ready {
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

/// The current time as Kubernetes writes it (RFC 3339, seconds).
pub fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(cs: &'a [Condition], t: &str) -> &'a Condition {
        cs.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn invalid_spec_is_degraded_and_not_ready() {
        let cs = conditions(
            &Observed::Invalid {
                reason: "InvalidSpec".into(),
                message: "spec.s2s.tlsSecret: required".into(),
            },
            None,
            Some(3),
            &[],
            "2026-11-25T10:00:00Z",
        );
        assert_eq!(get(&cs, DEGRADED).status, "True");
        assert_eq!(get(&cs, DEGRADED).message, "spec.s2s.tlsSecret: required");
        assert_eq!(get(&cs, READY).status, "False");
        assert!(cs.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn readiness_follows_ready_replicas() {
        let rolling = conditions(
            &Observed::Applied {
                asked: 3,
                desired: 3,
                ready: 1,
                updated: true,
            },
            None,
            Some(1),
            &[],
            "t1",
        );
        assert_eq!(get(&rolling, READY).status, "False");
        assert_eq!(get(&rolling, READY).message, "1/3 gateway pods ready");
        assert_eq!(get(&rolling, PROGRESSING).status, "True");

        let done = conditions(
            &Observed::Applied {
                asked: 3,
                desired: 3,
                ready: 3,
                updated: false,
            },
            Some((true, "Licensed", "3 of 3 replicas licensed")),
            Some(1),
            &rolling,
            "t2",
        );
        assert_eq!(get(&done, READY).status, "True");
        assert_eq!(get(&done, PROGRESSING).status, "False");
        assert_eq!(get(&done, DEGRADED).status, "False");
        // Transition times move only when a status changes.
        assert_eq!(get(&done, READY).last_transition_time, "t2");
        assert_eq!(get(&done, DEGRADED).last_transition_time, "t1");
        assert_eq!(get(&done, LICENSED).status, "True");
    }

    #[test]
    fn scaled_to_zero_is_not_ready() {
        let cs = conditions(
            &Observed::Applied {
                asked: 0,
                desired: 0,
                ready: 0,
                updated: false,
            },
            None,
            None,
            &[],
            "t",
        );
        assert_eq!(get(&cs, READY).reason, "ScaledToZero");
        let unlicensed = conditions(
            &Observed::Applied {
                asked: 2,
                desired: 0,
                ready: 0,
                updated: false,
            },
            Some((false, "NoValidLicence", "0 of 2")),
            None,
            &[],
            "t",
        );
        assert_eq!(get(&unlicensed, READY).reason, "Unlicensed");
        assert_eq!(get(&unlicensed, LICENSED).status, "False");
    }

    #[test]
    fn now_is_rfc3339_in_seconds() {
        let n = now();
        assert!(n.ends_with('Z') && n.len() == 20, "{n}");
    }
}

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
