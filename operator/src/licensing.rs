//! Node licensing: which replicas of a gateway hold a seat. Pure.
//!
//! The licence Secret holds one or more signed licences (one per line). Each
//! replica `<gateway>-<ordinal>` gets one seat, in ordinal order, so the licensed
//! replicas are always `0..licensed`: the StatefulSet runs exactly those, and the
//! rest stay unscheduled while Licensed=False says why.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use xmppfed_licence::{LicenceFile, LicenceState, assign, read_file};

use crate::crd::LicenceAssignment;

/// What licensing allows for one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenceOutcome {
    /// Replicas that hold a seat (the StatefulSet's replica count).
    pub licensed: i32,
    pub assignments: BTreeMap<String, LicenceAssignment>,
    /// Replicas asked for that hold no seat, by pod name.
    pub unlicensed: Vec<String>,
    /// The Licensed condition.
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

fn refused(pods: Vec<String>, reason: &'static str, message: String) -> LicenceOutcome {
    LicenceOutcome {
        licensed: 0,
        assignments: BTreeMap::new(),
        unlicensed: pods,
        ok: false,
        reason,
        message,
    }
}

/// `secret_value`: the licence Secret's key, `None` when the Secret or key is absent.
pub fn evaluate(
    gateway: &str,
    replicas: i32,
    secret_value: Option<&str>,
    public_key: Option<&str>,
    now: Timestamp,
) -> LicenceOutcome {
    let pods = xmppfed_licence::replicas(gateway, u32::try_from(replicas.max(0)).unwrap_or(0));
    let Some(public_key) = public_key else {
        return refused(
            pods,
            "NoLicenceKey",
            "the operator has no licence public key (--licence-public-key): no replica can be licensed".into(),
        );
    };
    let Some(text) = secret_value else {
        return refused(
            pods,
            "LicenceSecretMissing",
            "the Secret named by spec.licenceSecret, or its key, does not exist".into(),
        );
    };
    let LicenceFile { licences, problems } = read_file(text, public_key);
    let assignment = assign(&licences, &pods, now);
    let licensed = i32::try_from(assignment.seats.len()).unwrap_or(i32::MAX);
    let assignments = assignment
        .seats
        .iter()
        .map(|(pod, l)| {
            (
                pod.clone(),
                LicenceAssignment {
                    licence_id: l.id.clone(),
                    expires: l.expires.to_string(),
                },
            )
        })
        .collect();
    let expiring: Vec<String> = licences
        .iter()
        .filter(|l| l.state(now) == LicenceState::ExpiringSoon)
        .map(|l| format!("{} expires {}", l.id, l.expires))
        .collect();
    let expired = licences
        .iter()
        .filter(|l| l.state(now) == LicenceState::Expired)
        .count();
    let mut notes = problems;
    if expired > 0 {
        notes.push(format!("{expired} licence(s) expired"));
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join("; "))
    };

    let (ok, reason, message) = if !assignment.unlicensed.is_empty() {
        let reason = if licensed == 0 {
            "NoValidLicence"
        } else {
            "InsufficientSeats"
        };
        (
            false,
            reason,
            format!(
                "{licensed} of {replicas} replicas licensed; unscheduled: {}{notes}",
                assignment.unlicensed.join(", ")
            ),
        )
    } else if !expiring.is_empty() {
        (
            true,
            "ExpiringSoon",
            format!(
                "{licensed} of {replicas} replicas licensed; {}{notes}",
                expiring.join(", ")
            ),
        )
    } else {
        (
            true,
            "Licensed",
            format!("{licensed} of {replicas} replicas licensed{notes}"),
        )
    };
    LicenceOutcome {
        licensed,
        assignments,
        unlicensed: assignment.unlicensed,
        ok,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xmppfed_licence::{Licence, generate_key, issue};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn licence(private: &str, id: &str, nodes: u32, expires: &str) -> String {
        let l = Licence {
            id: id.into(),
            licensee: "Fabrikam".into(),
            nodes,
            issued: at("2026-01-01T00:00:00Z"),
            expires: at(expires),
            features: vec![],
        };
        issue(&l, private).unwrap()
    }

    #[test]
    fn enough_seats_license_every_replica() {
        let (private, public) = generate_key().unwrap();
        let text = licence(&private, "L-3", 3, "2028-01-01T00:00:00Z");
        let o = evaluate(
            "fabrikam",
            3,
            Some(&text),
            Some(&public),
            at("2026-11-25T00:00:00Z"),
        );
        assert!(o.ok, "{o:?}");
        assert_eq!((o.licensed, o.reason), (3, "Licensed"));
        assert_eq!(o.assignments["fabrikam-2"].licence_id, "L-3");
    }

    #[test]
    fn a_shortage_licenses_the_first_replicas_and_says_which_wait() {
        let (private, public) = generate_key().unwrap();
        let text = format!(
            "{}\n{}\n",
            licence(&private, "L-1", 1, "2028-01-01T00:00:00Z"),
            licence(&private, "L-old", 5, "2026-01-02T00:00:00Z")
        );
        let o = evaluate(
            "fabrikam",
            3,
            Some(&text),
            Some(&public),
            at("2026-11-25T00:00:00Z"),
        );
        assert!(!o.ok);
        assert_eq!((o.licensed, o.reason), (1, "InsufficientSeats"));
        assert_eq!(
            o.message,
            "1 of 3 replicas licensed; unscheduled: fabrikam-1, fabrikam-2 (1 licence(s) expired)"
        );
    }

    #[test]
    fn forged_missing_or_unverifiable_licences_license_nothing() {
        let (private, public) = generate_key().unwrap();
        let (other_private, _) = generate_key().unwrap();
        let foreign = licence(&other_private, "L-x", 9, "2028-01-01T00:00:00Z");
        let o = evaluate(
            "g",
            1,
            Some(&foreign),
            Some(&public),
            at("2026-11-25T00:00:00Z"),
        );
        assert_eq!((o.licensed, o.reason), (0, "NoValidLicence"));
        assert!(
            o.message.contains("signature does not match"),
            "{}",
            o.message
        );

        let good = licence(&private, "L-1", 1, "2028-01-01T00:00:00Z");
        assert_eq!(
            evaluate("g", 1, None, Some(&public), at("2026-11-25T00:00:00Z")).reason,
            "LicenceSecretMissing"
        );
        assert_eq!(
            evaluate("g", 1, Some(&good), None, at("2026-11-25T00:00:00Z")).reason,
            "NoLicenceKey"
        );
    }

    #[test]
    fn expiry_warns_then_stops() {
        let (private, public) = generate_key().unwrap();
        let text = licence(&private, "L-1", 1, "2026-12-10T00:00:00Z");
        let soon = evaluate(
            "g",
            1,
            Some(&text),
            Some(&public),
            at("2026-11-25T00:00:00Z"),
        );
        assert!(soon.ok);
        assert_eq!(soon.reason, "ExpiringSoon");
        let after = evaluate(
            "g",
            1,
            Some(&text),
            Some(&public),
            at("2026-12-10T00:00:00Z"),
        );
        assert_eq!((after.ok, after.licensed), (false, 0));
    }
}
