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
            waiting: vec![],
            unlicensed: vec![],
            reported: Reported::default(),
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
            waiting: vec![],
            unlicensed: vec![],
            reported: Reported::default(),
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
fn an_unlicensed_replica_is_a_replica_not_ready_and_named() {
    let cs = conditions(
        &Observed::Applied {
            asked: 3,
            desired: 2,
            ready: 2,
            updated: false,
            waiting: vec![],
            unlicensed: vec!["g-2".into()],
            reported: Reported::default(),
        },
        Some((false, "InsufficientSeats", "2 of 3 replicas licensed")),
        Some(1),
        &[],
        "t",
    );
    let ready = get(&cs, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ReplicasUnlicensed")
    );
    assert_eq!(
        ready.message,
        "2/3 gateway pods ready; unlicensed: g-2 (no licence seat: see the Licensed condition)"
    );
    // The licensed replicas have rolled out: nothing is in progress.
    assert_eq!(get(&cs, PROGRESSING).status, "False");
}

#[test]
fn scaled_to_zero_is_not_ready() {
    let cs = conditions(
        &Observed::Applied {
            asked: 0,
            desired: 0,
            ready: 0,
            updated: false,
            waiting: vec![],
            unlicensed: vec![],
            reported: Reported::default(),
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
            waiting: vec![],
            unlicensed: vec![],
            reported: Reported::default(),
        },
        Some((false, "NoValidLicence", "0 of 2")),
        None,
        &[],
        "t",
    );
    assert_eq!(get(&unlicensed, READY).reason, "Unlicensed");
    assert_eq!(get(&unlicensed, LICENSED).status, "False");
}

fn pod(name: &str, status: serde_json::Value, node: Option<&str>) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "gateway"}], "nodeName": node},
        "status": status,
    }))
    .unwrap()
}

#[test]
fn ready_names_the_pods_it_waits_for() {
    let pods = [
        pod(
            "g-1",
            serde_json::json!({"phase": "Pending", "containerStatuses": [{
                "name": "gateway", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}),
            Some("node-a"),
        ),
        pod("g-0", serde_json::json!({"phase": "Pending"}), None),
        pod(
            "g-2",
            serde_json::json!({"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient memory."}]}),
            None,
        ),
        pod(
            "g-3",
            serde_json::json!({"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"}]}),
            Some("node-a"),
        ),
        pod(
            "g-4",
            serde_json::json!({"phase": "Running", "containerStatuses": [{
                "name": "gateway", "image": "i", "imageID": "", "ready": false,
                "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"exitCode": 1, "message":
                    "INFO starting\nError: s2s.tls: no certificate in /etc/tls\n\n"}}}]}),
            Some("node-a"),
        ),
    ];
    let waiting = waiting_pods(&pods);
    assert_eq!(
        waiting,
        [
            "g-0 (Pending: not scheduled to any node)",
            "g-1 (Pending: container gateway ImagePullBackOff)",
            "g-2 (Pending: not scheduled, Unschedulable: 0/1 nodes are available: 1 Insufficient memory.)",
            "g-4 (Running: container gateway CrashLoopBackOff: Error: s2s.tls: no certificate in /etc/tls)",
        ]
    );
    let cs = conditions(
        &Observed::Applied {
            asked: 4,
            desired: 4,
            ready: 1,
            updated: false,
            waiting,
            unlicensed: vec![],
            reported: Reported::default(),
        },
        None,
        None,
        &[],
        "t",
    );
    assert!(
        get(&cs, READY)
            .message
            .starts_with("1/4 gateway pods ready; waiting for g-0 (Pending: not scheduled"),
        "{}",
        get(&cs, READY).message
    );
    assert!(
        get(&cs, PROGRESSING)
            .message
            .contains("g-1 (Pending: container gateway ImagePullBackOff)")
    );

    let many: Vec<Pod> = (0..8)
        .map(|i| pod(&format!("g-{i}"), serde_json::json!({}), None))
        .collect();
    let named = waiting_pods(&many);
    assert_eq!(named.len(), NAMED_PODS + 1);
    assert_eq!(named.last().unwrap(), "3 more");
}

#[test]
fn now_is_rfc3339_in_seconds() {
    let n = now();
    assert!(n.ends_with('Z') && n.len() == 20, "{n}");
}

fn annotated(name: &str, role: &str, annotations: serde_json::Value) -> Pod {
    let meta = serde_json::json!({
        "name": name,
        "labels": {"xmppfed.io/role": role},
        "annotations": annotations,
    });
    serde_json::from_value(serde_json::json!({"metadata": meta})).unwrap()
}

fn applied(reported: Reported) -> Vec<Condition> {
    conditions(
        &Observed::Applied {
            asked: 1,
            desired: 1,
            ready: 1,
            updated: false,
            waiting: vec![],
            unlicensed: vec![],
            reported,
        },
        None,
        Some(1),
        &[],
        "t1",
    )
}

#[test]
fn the_tenant_condition_follows_the_leaders_report() {
    let pod = |name: &str, role: &str, annotation: Option<&str>| -> Pod {
        let annotations = match annotation {
            Some(a) => serde_json::json!({"xmppfed.io/tenant-sign-in": a}),
            None => serde_json::json!({}),
        };
        annotated(name, role, annotations)
    };
    let tenant = |pods: &[Pod]| Reported::from_pods(pods).tenant;
    assert_eq!(tenant(&[pod("g-0", "leader", None)]), None);
    let refused = PodReport::Refused {
        reason: "MfaRequired".into(),
        message: "sign-in refused for bob@shadow.test: MfaRequired (exclude them)".into(),
    };
    let mfa = "MfaRequired: sign-in refused for bob@shadow.test: MfaRequired (exclude them)";
    // The leader's report wins over a standby's stale one.
    assert_eq!(
        tenant(&[
            pod("g-0", "standby", Some(mfa)),
            pod("g-1", "leader", Some("ok"))
        ]),
        Some(PodReport::Accepted)
    );
    assert_eq!(
        tenant(&[
            pod("g-0", "standby", Some("ok")),
            pod("g-1", "standby", Some(mfa))
        ]),
        Some(refused.clone())
    );
    let reported = Reported {
        tenant: Some(refused),
        partner: None,
    };
    assert!(reported.awaited(false), "looked at again soon");
    let cs = applied(reported);
    let tenant = get(&cs, TENANT_READY);
    assert_eq!(
        (tenant.status.as_str(), tenant.reason.as_str()),
        ("False", "MfaRequired")
    );
    assert!(tenant.message.contains("exclude them"));
    assert!(
        cs.iter().all(|c| c.type_ != PARTNER_REACHABLE),
        "Graph only"
    );
    assert_eq!(
        get(&cs, READY).status,
        "True",
        "the pods themselves are ready"
    );
}

#[test]
fn the_partner_condition_follows_the_sip_leaders_probe() {
    let refusal = "PartnerRefusesDomain: contoso.test's edge sip.contoso.test refuses federation with xmpp.test: 403 1002";
    let pods = [
        annotated(
            "g-0",
            "leader",
            serde_json::json!({"xmppfed.io/sip-partner": refusal}),
        ),
        annotated("g-1", "standby", serde_json::json!({})),
    ];
    let reported = Reported::from_pods(&pods);
    assert_eq!(reported.tenant, None, "no tenant in SIP federation");
    assert!(reported.awaited(true));
    let cs = applied(reported);
    let partner = get(&cs, PARTNER_REACHABLE);
    assert_eq!(
        (partner.status.as_str(), partner.reason.as_str()),
        ("False", "PartnerRefusesDomain")
    );
    assert!(partner.message.contains("1002"), "{}", partner.message);
    assert!(cs.iter().all(|c| c.type_ != TENANT_READY));

    let fixed = [annotated(
        "g-0",
        "leader",
        serde_json::json!({"xmppfed.io/sip-partner": "ok"}),
    )];
    let reported = Reported::from_pods(&fixed);
    assert!(!reported.awaited(true));
    assert!(
        Reported::default().awaited(true),
        "a ready SIP gateway's first answer is awaited"
    );
    assert!(!Reported::default().awaited(false));
    let partner = applied(reported)
        .into_iter()
        .find(|c| c.type_ == PARTNER_REACHABLE)
        .unwrap();
    assert_eq!(
        (partner.status.as_str(), partner.reason.as_str()),
        ("True", "PartnerAccepts")
    );
}

#[test]
fn a_rollout_past_its_deadline_is_reported_stuck_until_it_finishes() {
    use std::time::Duration;
    let stuck_pod = Observed::Applied {
        asked: 1,
        desired: 1,
        ready: 0,
        updated: false,
        waiting: vec!["contoso-0 (Pending: ErrImageNeverPull: image not present)".into()],
        unlicensed: vec![],
        reported: Reported::default(),
    };
    let at = |secs: i64, previous: &[Condition]| {
        let now = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + secs)
            .unwrap()
            .to_string();
        let out = conditions(&stuck_pod, None, Some(2), previous, &now);
        progress_deadline(out, previous, Duration::from_secs(600), &now)
    };
    let started = at(0, &[]);
    assert_eq!(get(&started, PROGRESSING).status, "True");
    let later = at(599, &started);
    assert_eq!(get(&later, PROGRESSING).reason, "RollingOut");
    let overdue = at(600, &later);
    let p = get(&overdue, PROGRESSING);
    assert_eq!(
        (p.status.as_str(), p.reason.as_str()),
        ("False", DEADLINE_EXCEEDED)
    );
    assert!(p.message.contains("ErrImageNeverPull"), "{}", p.message);
    assert_eq!(p.last_transition_time, "2027-01-15T08:10:00Z");
    // Still stuck on the next reconciles: not flipped back to RollingOut.
    let after = at(700, &overdue);
    assert_eq!(get(&after, PROGRESSING).reason, DEADLINE_EXCEEDED);
    assert_eq!(
        get(&after, PROGRESSING).last_transition_time,
        p.last_transition_time
    );
    // A new generation starts a new rollout, and the clock with it.
    let now = k8s_openapi::jiff::Timestamp::from_second(1_800_000_800)
        .unwrap()
        .to_string();
    let respecified = progress_deadline(
        conditions(&stuck_pod, None, Some(3), &after, &now),
        &after,
        Duration::from_secs(600),
        &now,
    );
    assert_eq!(get(&respecified, PROGRESSING).reason, "RollingOut");
    // And so does a new generation while the last one was still rolling out.
    let rolling = at(300, &started);
    let now = k8s_openapi::jiff::Timestamp::from_second(1_800_000_650)
        .unwrap()
        .to_string();
    let changed = progress_deadline(
        conditions(&stuck_pod, None, Some(3), &rolling, &now),
        &rolling,
        Duration::from_secs(600),
        &now,
    );
    let p = get(&changed, PROGRESSING);
    assert_eq!(
        (p.reason.as_str(), p.last_transition_time.as_str()),
        ("RollingOut", now.as_str())
    );
}
